"""The dashboard server's settings (.streamlit/config.toml): it watches the project's own code
only, never the 59k-file .venv inside the project (an idle server that watched it logged
hundreds of "Inotify queue overflowed" lines and burnt half a core)."""

from __future__ import annotations

import os
import time
import tomllib
from pathlib import Path

import pytest
from streamlit.watcher.folder_black_list import FolderBlackList

from fixtures_server import dashboard
from kit.paths import REPO_ROOT

CONFIG = REPO_ROOT / ".streamlit" / "config.toml"
NOT_WATCHED = (".venv", "runs", ".cache", "artifacts", ".git")


def _config() -> dict:
    return tomllib.loads(CONFIG.read_text())


def test_config_watches_only_the_projects_code():
    server = _config()["server"]
    # watchdog watches app.py's folder recursively, .venv included, whatever the blacklist says
    assert server["fileWatcherType"] in ("poll", "none")
    blacklist = FolderBlackList(server["folderWatchBlacklist"])  # Streamlit's own matcher
    for folder in NOT_WATCHED:
        path = REPO_ROOT / folder / "lib" / "module.py"
        assert blacklist.is_blacklisted(str(path)), f"{folder}/ would be watched"
    for own in ("app.py", "kit/method.py", "kit/app/compare.py"):
        assert not blacklist.is_blacklisted(str(REPO_ROOT / own)), f"{own} would not be watched"
    assert server["runOnSave"] is False  # a save must not cut a training run short
    assert _config()["browser"]["gatherUsageStats"] is False


def _inotify_watches(pid: int) -> int:
    """Inotify watches the process holds (one per watched folder), from /proc."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd) == "anon_inode:inotify":
                count += Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text().count("inotify wd:")
        except OSError:  # closed meanwhile
            continue
    return count


def _own_folders() -> int:
    """Folders of the project outside the ones never watched (and hidden ones)."""
    count = 0
    for _, dirs, _ in os.walk(REPO_ROOT):
        dirs[:] = [d for d in dirs if d not in NOT_WATCHED and not d.startswith(".")]
        count += len(dirs)
    return count


def _run_app_once(url: str) -> None:
    """Open a session as a browser would and run the app once (watchers start with sessions)."""
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
    from websockets.sync.client import connect

    with connect(url.replace("http://", "ws://") + "/_stcore/stream", open_timeout=30) as ws:
        ask = BackMsg()
        ask.rerun_script.query_string = ""
        ws.send(ask.SerializeToString())
        deadline = time.time() + 120
        while time.time() < deadline:
            msg = ForwardMsg()
            msg.ParseFromString(ws.recv(timeout=deadline - time.time()))
            if msg.WhichOneof("type") == "script_finished":
                return
    pytest.fail("the app did not finish its first run")


@pytest.mark.skipif(not Path("/proc/self/fdinfo").is_dir(), reason="counts watches through Linux /proc")
def test_server_does_not_watch_the_venv(tmp_path):
    env = {"KIT_RUNS_ROOT": str(tmp_path / "runs"), "KIT_CACHE_DIR": str(tmp_path / "cache")}
    log = tmp_path / "streamlit.log"
    with dashboard(env, log) as (url, proc):  # no watcher options: the shipped config decides
        _run_app_once(url)
        watches = _inotify_watches(proc.pid)
    text = log.read_text()
    assert "Inotify queue overflowed" not in text, text[-2000:]
    # watchdog on the project folder holds one watch per folder, .venv's thousands included
    assert watches <= _own_folders() + 2, f"{watches} inotify watches: the server watches .venv?"
    assert "gatherUsageStats" not in text  # Streamlit's notice when usage statistics are on

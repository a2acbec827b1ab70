"""The project's own promises: pinned setup files agree, README shows the two commands."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> list[str]:
    return [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def test_environment_yml_lists_the_same_pins():
    env = (ROOT / "environment.yml").read_text()
    listed = re.findall(r"^\s+- ([A-Za-z0-9_.-]+==[^\s]+)\s*$", env, flags=re.M)
    assert sorted(listed) == sorted(_requirements())


def test_every_requirement_is_pinned():
    assert all("==" in r for r in _requirements())


def test_readme_shows_the_two_commands_and_ci_calls_make_test():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci/run").read_text()


def test_sample_ships_its_source_notice():
    text = (ROOT / "kit/sample/SOURCE.txt").read_text()
    assert "Huang" in text and "Magnetic" in text


def test_readme_commands_run_in_the_venv_as_written():
    """A pasted ``python -m kit`` runs the system Python, without torch or the kit: every shell
    block of the README that calls the kit activates the venv first or names its Python."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    calling = [b for b in blocks if re.search(r"(^|\s)python -m kit", b, flags=re.M)]
    assert calling, "the README shows no kit command"
    for block in calling:
        lines = [line for line in block.splitlines() if line.strip()]
        activated = lines[0].startswith("source .venv/bin/activate")
        assert activated or all(".venv/bin/python -m kit" in line for line in lines
                                if "python -m kit" in line), block

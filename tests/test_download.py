"""kit.download against a loopback HTTP server: checksum, idempotency, safe unpacking, errors.

Nothing here leaves the machine: the server binds 127.0.0.1, proxies are switched off for the
test, and an autouse guard makes any socket connection to a non-loopback address fail.
"""

from __future__ import annotations

import csv
import hashlib
import io
import ipaddress
import json
import socket
import tarfile
import threading
import zipfile
from collections import Counter
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import kit.download
from kit.data import DataError, find_category
from kit.download import (DATASETS, MTD_COMMIT, MTD_MANIFEST, MTD_SPLIT, PROVENANCE_FILE,
                          DatasetEntry, download_dataset, layout_mtd, main, mtd_layout_path,
                          read_name_list, read_sha256_manifest, unpack)
from kit.paths import SHARED_DATA

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """Loopback only, no proxies, no user settings, and the download cache inside tmp_path."""
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv("KIT_MVTEC_URL", raising=False)
    monkeypatch.delenv("KIT_MTD_URL", raising=False)
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "cache"))
    real_connect = socket.socket.connect

    def loopback_only(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            if not ipaddress.ip_address(address[0]).is_loopback:
                raise AssertionError(f"test tried to reach a non-loopback host: {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)


@pytest.fixture
def server(tmp_path, request):
    """A ThreadingHTTPServer on 127.0.0.1 serving ``served/``; ``hits`` lists request paths."""
    folder = tmp_path / "served"
    folder.mkdir()
    hits: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            hits.append(self.path)
            super().do_GET()

        def log_message(self, *args):  # keep test output clean
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(folder)))
    # A short poll interval keeps shutdown() (which waits for the next poll) fast.
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()

    def stop():
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)

    request.addfinalizer(stop)
    return SimpleNamespace(folder=folder, hits=hits,
                           url=lambda name: f"http://127.0.0.1:{httpd.server_address[1]}/{name}")


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)


def make_mvtec_tree(root: Path) -> Path:
    """Category ``toy``: 3 train images, 1 good + 1 crack test image, and the crack's mask."""
    toy = root / "toy"
    for i in range(3):
        _png(toy / "train/good" / f"{i:03d}.png", 100 + i)
    _png(toy / "test/good/000.png", 100)
    _png(toy / "test/crack/000.png", 200)
    _png(toy / "ground_truth/crack/000_mask.png", 255)
    (root / "license.txt").write_text("toy data for tests\n")
    return root


def make_tar_xz(source: Path, archive: Path) -> str:
    """Pack the contents of ``source`` at the archive root (as MVTec's archive is); sha256."""
    with tarfile.open(archive, "w:xz") as tar:
        for child in sorted(source.iterdir()):
            tar.add(child, arcname=child.name)
    return hashlib.sha256(archive.read_bytes()).hexdigest()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes = b"x") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _add_symlink(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    tar.addfile(info)


@pytest.fixture
def toy_archive(tmp_path, server):
    sha = make_tar_xz(make_mvtec_tree(tmp_path / "tree"), server.folder / "archive.tar.xz")
    return SimpleNamespace(url=server.url("archive.tar.xz"), sha256=sha)


def test_download_unpacks_verified_archive(tmp_path, server, toy_archive):
    dest = tmp_path / "dest"
    root = download_dataset("mvtec", dest, url=toy_archive.url, sha256=toy_archive.sha256,
                            progress=False)
    assert root == dest / DATASETS["mvtec"].folder
    category = find_category(root, "toy")
    assert len(category.train) == 3
    assert len(category.test) == 2
    crack = [s for s in category.test if s.defect_type == "crack"]
    assert len(crack) == 1 and crack[0].mask_path == root / "toy/ground_truth/crack/000_mask.png"
    assert server.hits == ["/archive.tar.xz"]
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]  # staging folder gone


def test_second_call_does_not_download_again(tmp_path, server, toy_archive):
    dest = tmp_path / "dest"
    first = download_dataset("mvtec", dest, url=toy_archive.url, sha256=toy_archive.sha256,
                             progress=False)
    second = download_dataset("mvtec", dest, url=toy_archive.url, sha256=toy_archive.sha256,
                              progress=False)
    assert first == second
    assert len(server.hits) == 1


def test_url_from_environment(tmp_path, server, toy_archive, monkeypatch):
    monkeypatch.setenv("KIT_MVTEC_URL", toy_archive.url)
    root = download_dataset("mvtec", tmp_path / "dest", sha256=toy_archive.sha256, progress=False)
    assert find_category(root, "toy").has_masks
    assert server.hits == ["/archive.tar.xz"]


def test_wrong_sha256_is_refused_and_leaves_nothing(tmp_path, server, toy_archive):
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match="sha256") as info:
        download_dataset("mvtec", dest, url=toy_archive.url, sha256="0" * 64, progress=False)
    assert toy_archive.url in str(info.value)
    assert not (dest / DATASETS["mvtec"].folder).exists()
    assert not dest.exists() or not any(dest.iterdir())
    assert not list((tmp_path / "cache").rglob("*.tar.xz"))  # pooch deleted the bad file


def test_path_traversal_member_is_refused(tmp_path, server):
    tree = make_mvtec_tree(tmp_path / "tree")
    archive = server.folder / "evil.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(tree / "toy", arcname="toy")  # a valid category first: it must not survive
        _add_bytes(tar, "../evil.txt", b"escaped")
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    dest = tmp_path / "area" / "dest"
    with pytest.raises(DataError, match=r"\.\."):
        download_dataset("mvtec", dest, url=server.url("evil.tar.xz"), sha256=sha, progress=False)
    assert not list(tmp_path.rglob("evil.txt"))
    assert list(dest.iterdir()) == []  # neither the data folder nor a staging folder


@pytest.mark.parametrize("build, why", [
    (lambda tar, tmp: _add_bytes(tar, str(tmp / "abs_evil.txt")), "absolute"),
    (lambda tar, tmp: _add_symlink(tar, "up", "../../abs_evil.txt"), "outside"),
    (lambda tar, tmp: _add_symlink(tar, "root", "/"), "absolute"),
    (lambda tar, tmp: (_add_symlink(tar, "a", "."), _add_bytes(tar, "a/abs_evil.txt")),
     "symbolic link of the same archive"),
])
def test_unsafe_members_are_refused(tmp_path, build, why):
    archive = tmp_path / "bad.tar"
    with tarfile.open(archive, "w") as tar:
        build(tar, tmp_path)
    with pytest.raises(DataError, match=why):
        unpack(archive, tmp_path / "out" / "target")
    assert not (tmp_path / "abs_evil.txt").exists()
    assert not (tmp_path / "out" / "abs_evil.txt").exists()


def test_link_inside_the_folder_is_allowed(tmp_path):
    archive = tmp_path / "ok.tar"
    with tarfile.open(archive, "w") as tar:
        _add_bytes(tar, "b.txt", b"hello")
        _add_symlink(tar, "a/link", "../b.txt")
    unpack(archive, tmp_path / "target")
    assert (tmp_path / "target/a/link").read_bytes() == b"hello"


def test_zip_archives(tmp_path, server):
    tree = make_mvtec_tree(tmp_path / "tree")
    archive = server.folder / "toy.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(tree.rglob("*")):
            zf.write(path, Path("wrapped") / path.relative_to(tree))  # one top-level folder
    entry = DatasetEntry(name="toyzip", url=server.url("toy.zip"), kind="zip", folder="toyzip",
                         sha256=hashlib.sha256(archive.read_bytes()).hexdigest(),
                         citation="nobody", licence="none")
    root = download_dataset(entry, tmp_path / "dest", progress=False)
    assert root == tmp_path / "dest/toyzip/wrapped"  # the wrapping folder is found
    assert len(find_category(root, "toy").train) == 3

    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("fine.txt", "ok")
        zf.writestr("../evil.txt", "escaped")
    with pytest.raises(DataError, match=r"\.\."):
        unpack(bad, tmp_path / "out" / "target", kind="zip")
    assert not list(tmp_path.rglob("evil.txt"))
    assert not (tmp_path / "out/target/fine.txt").exists()  # checked before any write


def test_archive_without_categories_names_the_folder(tmp_path, server):
    archive = server.folder / "plain.tar.xz"
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain/readme.txt").write_text("no images here\n")
    sha = make_tar_xz(tmp_path / "plain", archive)
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match="no category folder") as info:
        download_dataset("mvtec", dest, url=server.url("plain.tar.xz"), sha256=sha, progress=False)
    assert str(dest / DATASETS["mvtec"].folder) in str(info.value)
    assert list(dest.iterdir()) == []


def test_unknown_dataset_lists_known_ones(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'nope'.*mvtec"):
        download_dataset("nope", tmp_path)


def test_missing_sha256_is_refused_without_allow_unverified(tmp_path, server, toy_archive):
    entry = DatasetEntry(name="toyset", url=toy_archive.url, sha256=None, kind="tar",
                         folder="toyset", citation="nobody", licence="none")
    with pytest.raises(DataError, match="no sha256 is known.*allow_unverified"):
        download_dataset(entry, tmp_path / "dest", progress=False)
    assert server.hits == []  # refused before any request
    with pytest.warns(UserWarning, match=toy_archive.sha256):
        root = download_dataset(entry, tmp_path / "dest", progress=False, allow_unverified=True)
    assert find_category(root, "toy").summary()["n_train"] == 3


def test_command_line(tmp_path, server, toy_archive, capsys):
    dest = tmp_path / "dest"
    status = main(["mvtec", "--dest", str(dest), "--url", toy_archive.url,
                   "--sha256", toy_archive.sha256, "--quiet"])
    out = capsys.readouterr().out
    assert status == 0
    assert str(dest / DATASETS["mvtec"].folder) in out
    assert "CC BY-NC-SA 4.0" in out and "Bergmann" in out
    assert main(["mvtec", "--dest", str(tmp_path / "d2"), "--url", toy_archive.url,
                 "--sha256", "f" * 64, "--quiet"]) == 1
    assert "sha256" in capsys.readouterr().err


# --------------------------------------------------------------------------- Magnetic Tile Defects

MTD_TOP = f"Magnetic-tile-defect-datasets.-{MTD_COMMIT}"  # GitHub's archive wraps all in it
SHARED_MTD = SHARED_DATA / "mtd"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_mtd_repository(repo: Path) -> Path:
    """A tiny MTD clone: 3 MT_Free images with their all-zero masks, 2 MT_Crack and 1 MT_Fray
    images with masks, and the README and overview picture the layout leaves out."""
    for i in range(3):
        _png(repo / f"MT_Free/Imgs/exp0_num_{i}.jpg", 100 + 10 * i)
        _png(repo / f"MT_Free/Imgs/exp0_num_{i}.png", 0)
    for defect, numbers in (("Crack", (10, 11)), ("Fray", (20,))):
        for n in numbers:
            _png(repo / f"MT_{defect}/Imgs/exp1_num_{n}.jpg", 200)
            _png(repo / f"MT_{defect}/Imgs/exp1_num_{n}.png", 255)
    (repo / "README.md").write_text("It is welcomed to use our dataset.\n")
    _png(repo / "dataset.jpg", 50)
    return repo


def pack_github_archive(repo: Path, archive: Path) -> None:
    """``repo`` as GitHub's tar.gz of a commit: a pax global header, then ``<repo>-<commit>/``."""
    with tarfile.open(archive, "w:gz", format=tarfile.PAX_FORMAT,
                      pax_headers={"comment": MTD_COMMIT}) as tar:
        tar.add(repo, arcname=repo.name)


@pytest.fixture
def mtd(tmp_path, server, monkeypatch):
    """The tiny repository, its own manifest and split (patched in for the shipped ones), and
    ``serve()``, which packs the repository as it is then and returns the archive's URL."""
    repo = make_mtd_repository(tmp_path / "github" / MTD_TOP)
    used = sorted(p for p in repo.glob("MT_*/Imgs/*") if not p.match("MT_Free/Imgs/*.png"))
    manifest = tmp_path / "lists/mtd_sha256.txt"
    manifest.parent.mkdir()
    manifest.write_text("".join(f"{_sha256(p)}  {p.relative_to(repo).as_posix()}\n" for p in used))
    split = tmp_path / "lists/train.txt"
    split.write_text("exp0_num_2.jpg\nexp0_num_0.jpg\n")
    monkeypatch.setattr(kit.download, "MTD_MANIFEST", manifest)
    monkeypatch.setattr(kit.download, "MTD_SPLIT", split)

    def serve(name: str = "mtd.tar.gz") -> str:
        pack_github_archive(repo, server.folder / name)
        return server.url(name)

    return SimpleNamespace(repo=repo, manifest=manifest, split=split, n_files=len(used), serve=serve)


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_mtd_is_laid_out_in_mvtec_layout_with_the_split(tmp_path, server, mtd):
    dest = tmp_path / "dest"
    root = download_dataset("mtd", dest, url=mtd.serve(), progress=False)
    assert root == dest / "mtd"
    assert _files(root) == {
        PROVENANCE_FILE,
        "magnetic_tile/train/good/exp0_num_0.jpg", "magnetic_tile/train/good/exp0_num_2.jpg",
        "magnetic_tile/test/good/exp0_num_1.jpg",
        "magnetic_tile/test/crack/exp1_num_10.jpg", "magnetic_tile/test/crack/exp1_num_11.jpg",
        "magnetic_tile/test/fray/exp1_num_20.jpg",
        "magnetic_tile/ground_truth/crack/exp1_num_10_mask.png",
        "magnetic_tile/ground_truth/crack/exp1_num_11_mask.png",
        "magnetic_tile/ground_truth/fray/exp1_num_20_mask.png",
    }  # no MT_Free masks, README or overview picture
    tile = root / "magnetic_tile"
    assert ((tile / "ground_truth/fray/exp1_num_20_mask.png").read_bytes()
            == (mtd.repo / "MT_Fray/Imgs/exp1_num_20.png").read_bytes())
    category = find_category(root, "magnetic_tile")
    assert category.summary()["test_counts"] == {"good": 1, "crack": 2, "fray": 1}
    assert all(s.mask_path is not None for s in category.test if s.label == 1)
    provenance = json.loads((root / PROVENANCE_FILE).read_text())
    assert provenance["verified"] and provenance["checked_by"] == "per-file sha256"
    assert provenance["files_checked"] == mtd.n_files == 9
    assert provenance["snapshot"] == MTD_COMMIT and "Huang" in provenance["citation"]
    assert server.hits == ["/mtd.tar.gz"]
    assert [p.name for p in dest.iterdir()] == ["mtd"]  # staging and unpacked folders gone


def test_mtd_second_call_does_not_download_again(tmp_path, server, mtd, monkeypatch):
    monkeypatch.setenv("KIT_MTD_URL", mtd.serve())
    first = download_dataset("mtd", tmp_path / "dest", progress=False)
    assert download_dataset("mtd", tmp_path / "dest", progress=False) == first
    # Another dest lays out the cached archive again, still without a request.
    other = download_dataset("mtd", tmp_path / "other", progress=False)
    assert _files(other / "magnetic_tile") == _files(first / "magnetic_tile")
    assert server.hits == ["/mtd.tar.gz"]


def test_mtd_tampered_file_is_refused_by_name(tmp_path, server, mtd):
    image = mtd.repo / "MT_Crack/Imgs/exp1_num_11.jpg"
    image.write_bytes(image.read_bytes() + b"\0")
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match="sha256") as info:
        download_dataset("mtd", dest, url=mtd.serve(), progress=False)
    assert info.value.path == Path("MT_Crack/Imgs/exp1_num_11.jpg")
    assert "magnetic_tile/test/crack/exp1_num_11.jpg" in str(info.value)
    assert list(dest.iterdir()) == []  # no data, staging or unpacked folder
    # Nothing checked the archive as a whole, so it must not be reused from the cache.
    assert not list((tmp_path / "cache").rglob("*.tar.gz"))


@pytest.mark.parametrize("missing", ["MT_Fray/Imgs/exp1_num_20.png", "MT_Free/Imgs/exp0_num_1.jpg"])
def test_mtd_missing_file_is_refused_by_name(tmp_path, server, mtd, missing):
    (mtd.repo / missing).unlink()
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match="missing from the archive") as info:
        download_dataset("mtd", dest, url=mtd.serve(), progress=False)
    assert info.value.path == Path(missing)
    assert list(dest.iterdir()) == []


def test_mtd_link_is_refused_even_with_the_right_bytes(tmp_path, server, mtd):
    image = mtd.repo / "MT_Free/Imgs/exp0_num_1.jpg"
    image.rename(mtd.repo / "copy.jpg")
    image.symlink_to("../../copy.jpg")  # inside the archive, so unpacking allows it
    with pytest.raises(DataError, match="symbolic link") as info:
        download_dataset("mtd", tmp_path / "dest", url=mtd.serve(), progress=False)
    assert info.value.path == Path("MT_Free/Imgs/exp0_num_1.jpg")
    assert list((tmp_path / "dest").iterdir()) == []


def test_mtd_split_name_outside_the_manifest_is_refused(tmp_path, mtd):
    mtd.split.write_text("exp0_num_0.jpg\nexp9_num_9.jpg\n")
    with pytest.raises(DataError, match="exp9_num_9.jpg") as info:
        layout_mtd(mtd.repo.parent, tmp_path / "out")
    assert info.value.path == mtd.split
    assert not (tmp_path / "out").exists()  # refused before anything moved


def test_mtd_command_line(tmp_path, server, mtd, capsys):
    assert main(["mtd", "--dest", str(tmp_path / "dest"), "--url", mtd.serve(), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "dest/mtd") in out and "magnetic_tile" in out
    assert "Surface defect saliency of magnetic tile" in out and "please cite" in out


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_MTD / "magnetic_tile").is_dir(), reason=f"needs {SHARED_MTD}")
def test_shipped_split_and_manifest_agree_with_the_staged_mtd():
    """The shipped lists rebuild ../shared/data/mtd file for file (it is byte-identical to the
    repository), with the counts its SOURCE.txt states."""
    train = read_name_list(MTD_SPLIT)
    assert len(train) == len(MTD_SPLIT.read_text().split()) == 761  # no duplicates
    assert train == read_name_list(SHARED_MTD / "differnet_train_split.txt")
    digests = read_sha256_manifest(MTD_MANIFEST)
    layout = {name: mtd_layout_path(name, train) for name in digests}
    counts = Counter(PurePosixPath(path).parent.as_posix() for path in layout.values())
    defects = {"blowhole": 115, "break": 85, "crack": 57, "fray": 32, "uneven": 103}
    assert counts == {"magnetic_tile/train/good": 761, "magnetic_tile/test/good": 191,
                      **{f"magnetic_tile/test/{d}": n for d, n in defects.items()},
                      **{f"magnetic_tile/ground_truth/{d}": n for d, n in defects.items()}}
    staged = _files(SHARED_MTD / "magnetic_tile")
    assert set(layout.values()) == {f"magnetic_tile/{path}" for path in staged}
    for name, path in layout.items():
        assert _sha256(SHARED_MTD / path) == digests[name], path
    # manifest.csv beside the data names the same originals; its defect rows give the same
    # places. (Its good rows are not compared: they predate the split now staged.)
    with (SHARED_MTD / "manifest.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["original_path"] for r in rows} == {n for n in digests if n.endswith(".jpg")}
    for row in (r for r in rows if r["label"] != "good"):
        assert layout[row["original_path"]] == row["staged_image"]
        assert layout[row["original_path"][:-len(".jpg")] + ".png"] == row["staged_mask"]

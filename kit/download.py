"""Download MVTec AD, Magnetic Tile Defects (or another archive) through pooch, checked by sha256.

    python -m kit.download mvtec --dest ~/data
    python -m kit.download mvtec --dest ~/data --url https://my.mirror/mvtec_anomaly_detection.tar.xz
    python -m kit.download mtd --dest ~/data      # -> ~/data/mtd/magnetic_tile, DifferNet's split

Steps, and why each is there:

1. If ``<dest>/<folder>`` already holds category folders, return at once: a finished download
   is never fetched or unpacked twice (the archive is 5 GB).
2. Refuse archives without a known sha256 unless the caller allows it explicitly: an unchecked
   5 GB file from a share link could be truncated, replaced or an HTML error page.
3. ``pooch.retrieve`` downloads into a cache folder and verifies the sha256 before the file is
   kept; a mismatch becomes a :class:`kit.data.DataError` naming the URL.
4. The archive is unpacked into a hidden staging folder inside ``dest``. Every member is
   checked before it is written (no absolute paths, no ``..``, no links leaving the folder, no
   devices), and Python's ``filter="data"`` guards extraction too where it exists. Only when
   the unpacked tree holds at least one category in MVTec layout is the staging folder renamed
   to ``<dest>/<folder>``; on any failure it is deleted, so a half-extracted folder is never
   mistaken for data by step 1.
5. Archives that are not in MVTec layout themselves (Magnetic Tile Defects: a GitHub snapshot,
   ``MT_<Defect>/Imgs/<name>.jpg`` + ``<name>.png``) have a ``layout`` step: the unpacked tree
   goes to a second hidden folder and each file the layout uses is checked against a sha256
   manifest shipped in ``kit/splits/`` and moved into the staging folder of step 4. GitHub
   builds its archives on the fly, so they are not byte-stable and have no digest to pin; the
   per-file digests pin the data instead, and a mismatch or a missing file is refused by name.

Other archives: pass a :class:`DatasetEntry` to :func:`download_dataset`, or add it to
``DATASETS`` with :func:`register_dataset` so the command line knows it too.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import posixpath
import re
import shutil
import sys
import tarfile
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath, PureWindowsPath
from urllib.parse import urlparse

from kit.data import DataError, list_categories
from kit.paths import cache_dir

ARCHIVE_KINDS = ("tar", "zip")  # "tar" covers .tar, .tar.gz, .tar.bz2, .tar.xz (tarfile detects)
# Raised by filter="data"; absent (so matched by nothing) on Pythons without extraction filters.
_FILTER_ERROR = getattr(tarfile, "FilterError", ())
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
PROVENANCE_FILE = ".kit_download.json"  # written beside the data: where it came from, which hash


def _normalise_sha256(value: str) -> str:
    """Lower-case hex digest; accepts a ``sha256:`` prefix as pooch and registries write it."""
    digest = value.strip().lower()
    if digest.startswith("sha256:"):
        digest = digest[len("sha256:"):]
    if not _SHA256.match(digest):
        raise ValueError(f"not a sha256 hex digest (64 hex characters): {value!r}")
    return digest


@dataclass(frozen=True)
class DatasetEntry:
    """One downloadable archive whose contents are (or contain) an MVTec-layout data root."""

    name: str  # key for download_dataset / the command line, e.g. "mvtec"
    url: str  # official download address; a mirror can replace it per call or by env var
    sha256: str | None  # hex digest of the archive; None = unknown, download refused by default
    kind: str  # "tar" (any compression) or "zip"
    folder: str  # folder created under dest; the archive is unpacked into it
    citation: str  # what users of the data are asked to cite
    licence: str  # the data's licence, printed after every download
    root_in_archive: str = ""  # path of the category-holding folder inside the unpacked tree
    filename: str = ""  # name of the cached archive; default: last part of the URL path
    description: str = ""
    # layout(unpacked, staging, progress) -> provenance dict: builds the MVTec layout in
    # ``staging`` from the unpacked archive, checking every file it uses (DataError otherwise).
    # Such an entry needs no archive sha256: the per-file check stands in for it.
    layout: Callable[[Path, Path, bool], dict] | None = None

    def archive_name(self) -> str:
        """File name of the archive in the download cache."""
        return self.filename or PurePosixPath(urlparse(self.url).path).name or f"{self.name}.archive"

    @property
    def url_env_var(self) -> str:
        """Environment variable that overrides the URL, e.g. ``KIT_MVTEC_URL``."""
        return "KIT_" + re.sub(r"[^A-Z0-9]", "_", self.name.upper()) + "_URL"


DATASETS: dict[str, DatasetEntry] = {}


def register_dataset(entry: DatasetEntry, replace: bool = False) -> DatasetEntry:
    """Add ``entry`` to ``DATASETS`` (the command line lists these). Refuses silent overwrites."""
    if entry.kind not in ARCHIVE_KINDS:
        raise ValueError(f"archive kind must be one of {ARCHIVE_KINDS}, got {entry.kind!r}")
    if entry.sha256 is not None:
        _normalise_sha256(entry.sha256)  # a typo in a registry hash should fail at import, not after 5 GB
    if Path(entry.folder).name != entry.folder or entry.folder in ("", ".", ".."):
        raise ValueError(f"folder must be a plain folder name, got {entry.folder!r}")
    if entry.name in DATASETS and not replace:
        raise ValueError(f"dataset {entry.name!r} is already registered (pass replace=True)")
    DATASETS[entry.name] = entry
    return entry


register_dataset(DatasetEntry(
    name="mvtec",
    url=("https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/"
         "420938113-1629952094/mvtec_anomaly_detection.tar.xz"),
    # MVTec does not publish a checksum next to the link. This value is the one anomalib
    # verifies every MVTec AD download against (DOWNLOAD_INFO.hashsum in
    # src/anomalib/data/datamodules/image/mvtecad.py, checked as sha256 by
    # anomalib.data.utils.download.check_hash), and the same digest was measured independently
    # by several projects for the 5,264,982,680-byte archive. If MVTec ever re-packs the
    # archive, the check fails loudly; pass sha256=... / --sha256 with the new digest then.
    sha256="cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
    kind="tar",
    # The archive has no top-level folder (bottle/, cable/, ... sit at its root), so it gets one.
    folder="mvtec_anomaly_detection",
    citation=("Paul Bergmann, Michael Fauser, David Sattlegger, Carsten Steger: MVTec AD - A "
              "Comprehensive Real-World Dataset for Unsupervised Anomaly Detection. CVPR 2019, "
              "pp. 9584-9592. And: Paul Bergmann, Kilian Batzner, Michael Fauser, David "
              "Sattlegger, Carsten Steger: The MVTec Anomaly Detection Dataset: A Comprehensive "
              "Real-World Dataset for Unsupervised Anomaly Detection. IJCV 129(4):1038-1059, 2021."),
    licence=("CC BY-NC-SA 4.0 (Creative Commons Attribution-NonCommercial-ShareAlike 4.0 "
             "International): non-commercial use only, https://creativecommons.org/licenses/by-nc-sa/4.0/"),
    description="MVTec AD, 15 object and texture categories, about 5.3 GB (4.9 GiB) compressed",
))


def get_dataset(name: str) -> DatasetEntry:
    """The registry entry called ``name``; DataError listing the known names otherwise."""
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(DATASETS)) or "none"
        raise DataError(name, f"unknown dataset {name!r} (known: {known}; or pass a "
                              "kit.download.DatasetEntry for another archive)") from None


# --------------------------------------------------------------------------- finding the data root

def _has_categories(folder: Path) -> bool:
    return folder.is_dir() and bool(list_categories(folder))


def find_data_root(base: Path, root_in_archive: str = "") -> Path | None:
    """The folder under ``base`` that holds MVTec-layout categories, or None.

    Looks at ``base/root_in_archive`` first, then ``base``, then a single wrapping subfolder,
    because mirrors and re-packed archives often add (or drop) one top-level folder.
    """
    candidates = [base / root_in_archive] if root_in_archive else []
    candidates.append(base)
    for candidate in candidates:
        if _has_categories(candidate):
            return candidate
    if not base.is_dir():
        return None
    wrapped = [p for p in base.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))
               and _has_categories(p)]
    return wrapped[0] if len(wrapped) == 1 else None


# --------------------------------------------------------------------------- safe unpacking

def _unsafe_name(name: str) -> str | None:
    """Why a member path may not be written under the target folder, or None if it may."""
    if not name:
        return "has an empty name"
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        return "has an absolute path"
    if ".." in re.split(r"[\\/]", name):
        return "contains '..'"
    return None


def _clean(name: str) -> str:
    """``./a//b/`` -> ``a/b``: the form used to compare member paths with each other."""
    return posixpath.normpath(name).lstrip("/") if name not in ("", ".", "./") else "."


def _checked_tar_members(tar: tarfile.TarFile, archive: Path) -> Iterator[tarfile.TarInfo]:
    """Yield the members of ``tar`` one by one, each checked before it is extracted.

    Checking lazily keeps a 5 GB tar.xz decompressed once instead of twice (listing first
    would read the whole stream); the caller unpacks into a staging folder that is deleted on
    any error, so members extracted before a bad one do not survive.
    """
    symlinks: set[str] = set()
    for member in tar:
        problem = _unsafe_name(member.name)
        name = _clean(member.name)
        parents = {"/".join(name.split("/")[:i]) for i in range(1, name.count("/") + 2)}
        if problem is None and parents & symlinks:
            # Writing through a link the archive itself created is how "link -> /etc, then
            # link/passwd" escapes; no data archive needs it, so it is refused outright.
            problem = "lies inside (or replaces) a symbolic link of the same archive"
        if problem is None and member.issym():
            target = member.linkname
            if target.startswith(("/", "\\")) or PureWindowsPath(target).drive:
                problem = f"is a symbolic link to an absolute path ({target})"
            else:
                # No ancestor of any member is a link (checked above), so resolving the target
                # textually from the member's own folder is where it really points.
                resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
                if resolved == ".." or resolved.startswith("../"):
                    problem = f"is a symbolic link pointing outside the folder ({target})"
            symlinks.add(name)
        elif problem is None and member.islnk():
            target_problem = _unsafe_name(member.linkname)
            if target_problem is not None:
                problem = f"is a hard link whose target {target_problem} ({member.linkname})"
        elif problem is None and not (member.isfile() or member.isdir()):
            problem = "is a device, pipe or other special file"
        if problem is not None:
            raise DataError(archive, f"refusing to unpack: member {member.name!r} {problem}")
        if not hasattr(tarfile, "data_filter"):
            # Python < 3.10.12 / 3.11.4 has no extraction filter: drop setuid/setgid/sticky
            # and group/other write bits ourselves, and keep files readable by their owner.
            member.mode = (member.mode & 0o755) | (0o700 if member.isdir() else 0o600)
        yield member


def _unpack_tar(archive: Path, target: Path, progress: bool) -> None:
    from tqdm.auto import tqdm

    extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    with tarfile.open(archive, "r:*") as tar:
        members = tqdm(_checked_tar_members(tar, archive), desc=f"unpacking {archive.name}",
                       unit=" files", disable=not progress, leave=False)
        tar.extractall(target, members=members, **extra)


def _unpack_zip(archive: Path, target: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        # The central directory lists every name up front, so all are checked before any write.
        for info in zf.infolist():
            problem = _unsafe_name(info.filename)
            if problem is not None:
                raise DataError(archive, f"refusing to unpack: member {info.filename!r} {problem}")
        zf.extractall(target)


def unpack(archive: Path | str, target: Path | str, kind: str = "tar", progress: bool = False) -> None:
    """Unpack ``archive`` into the folder ``target``, refusing members that would land outside it.

    Refused: absolute paths, ``..`` components, symbolic links pointing outside ``target`` (or
    to absolute paths), members written through a link of the same archive, hard links to
    such paths, devices and pipes. Raises DataError naming the archive and the bad member.
    ``target`` should be a fresh folder: on error, members before the bad one may be there.
    """
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    try:
        if kind == "tar":
            _unpack_tar(archive, target, progress)
        elif kind == "zip":
            _unpack_zip(archive, target)
        else:
            raise ValueError(f"archive kind must be one of {ARCHIVE_KINDS}, got {kind!r}")
    except DataError:
        raise
    except _FILTER_ERROR as err:  # the data filter found something our checks let through
        raise DataError(archive, f"refusing to unpack: {err}") from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, lzma.LZMAError, zlib.error) as err:
        # Corrupt or truncated archives surface as any of these, depending on the compression;
        # OSError may also be a full disk, so the wording does not blame the archive alone.
        raise DataError(archive, f"could not unpack the {kind} archive "
                                 f"({type(err).__name__}: {err})") from None


# --------------------------------------------------------------------------- download

def _fetch(url: str, sha256: str | None, cache: Path, fname: str, progress: bool) -> Path:
    """Download ``url`` into ``cache/fname`` through pooch (skipped if a verified copy is there)."""
    import pooch
    import requests

    try:
        path = pooch.retrieve(url, known_hash=f"sha256:{sha256}" if sha256 else None,
                              fname=fname, path=cache, progressbar=progress)
    except ValueError as err:
        if "does not match the known hash" in str(err):
            # pooch has already deleted the file; nothing was unpacked.
            raise DataError(url, f"the downloaded file does not match the expected sha256 "
                                 f"{sha256}, so it was deleted and nothing was unpacked "
                                 f"(pooch: {err})") from None
        raise DataError(url, f"download failed: {err}") from None
    except (requests.RequestException, OSError) as err:
        raise DataError(url, f"download failed ({type(err).__name__}: {err})") from None
    return Path(path)


def _unpack_entry(entry: DatasetEntry, archive: Path, staging: Path, url: str,
                  progress: bool, archive_checked: bool) -> dict:
    """Unpack ``archive`` into ``staging``, through ``entry.layout`` when it has one.

    Returns what the layout step reports for the provenance file (``{}`` without one). The
    archive is unpacked next to ``staging`` (same filesystem, so files are moved, not copied)
    and that folder is always deleted. When the layout step or unpacking fails and no sha256
    checked the archive, the cached archive is deleted too: pooch would reuse a damaged copy
    forever otherwise.
    """
    if entry.layout is None:
        unpack(archive, staging, entry.kind, progress=progress)
        return {}
    unpacked = Path(tempfile.mkdtemp(prefix=f".{entry.folder}.unpacked-", dir=staging.parent))
    try:
        unpack(archive, unpacked, entry.kind, progress=progress)
        return entry.layout(unpacked, staging, progress)
    except DataError as err:
        if archive_checked:
            raise
        archive.unlink(missing_ok=True)
        raise DataError(err.path, f"{err.problem} (archive from {url}; nothing was kept and the "
                                  "archive was removed from the cache, so the next call "
                                  "downloads it again)") from None
    finally:
        shutil.rmtree(unpacked, ignore_errors=True)


def download_dataset(name_or_entry: str | DatasetEntry, dest: Path | str, url: str | None = None,
                     sha256: str | None = None, progress: bool = True,
                     allow_unverified: bool = False, *, cache: Path | str | None = None) -> Path:
    """Download and unpack a dataset under ``dest``; return its data root (holds categories).

    ``name_or_entry``: a key of ``DATASETS`` (``"mvtec"``) or a :class:`DatasetEntry`.
    ``url``: replaces the entry's URL (a mirror); without it ``KIT_<NAME>_URL`` (e.g.
    ``KIT_MVTEC_URL``) is used when set. The sha256 still applies: a mirror must serve the
    identical file. ``sha256``: replaces the entry's digest. ``allow_unverified``: download even
    when no digest is known (a warning then reports the digest to pin); not needed for entries
    with a ``layout`` step, which check every file instead. ``cache``: where the archive is kept
    (default ``kit.paths.cache_dir() / "downloads"``; delete it after unpacking to save space).

    Returns at once, without any network access, when ``<dest>/<entry.folder>`` already holds
    MVTec-layout categories. Raises DataError on a wrong checksum, a failed download, an
    unsafe or unreadable archive, a file the layout step refuses, or an archive without
    categories; in each case no folder is left at ``<dest>/<entry.folder>``.
    """
    entry = name_or_entry if isinstance(name_or_entry, DatasetEntry) else get_dataset(name_or_entry)
    dest = Path(dest).expanduser()
    target = dest / entry.folder

    existing = find_data_root(target, entry.root_in_archive)
    if existing is not None:
        return existing
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        # Never delete or merge into something we did not make.
        raise DataError(target, "exists but holds no category folders in MVTec layout "
                                "(<category>/train/good); move it away or choose another dest")

    url = url or os.environ.get(entry.url_env_var) or entry.url
    expected = sha256 if sha256 is not None else entry.sha256
    expected = _normalise_sha256(expected) if expected is not None else None
    if expected is None and entry.layout is None and not allow_unverified:
        raise DataError(url, "no sha256 is known for this archive, so the download could not be "
                             "verified; pass sha256=... (--sha256) with the published digest, or "
                             "allow_unverified=True (--allow-unverified) to download it anyway")

    archive = _fetch(url, expected, Path(cache) if cache else cache_dir() / "downloads",
                     entry.archive_name(), progress)
    if expected is None:
        import pooch

        actual = pooch.file_hash(str(archive), alg="sha256")
        if entry.layout is None:
            warnings.warn(f"{entry.name}: downloaded {url} without a checksum; its sha256 is "
                          f"{actual}. Pass it as sha256= next time so a changed file is noticed.",
                          stacklevel=2)
    else:
        actual = expected

    dest.mkdir(parents=True, exist_ok=True)
    # Staging inside dest: the final rename stays on one filesystem, so it is atomic.
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.folder}.partial-", dir=dest))
    try:
        laid_out = _unpack_entry(entry, archive, staging, url, progress, expected is not None)
        root = find_data_root(staging, entry.root_in_archive)
        if root is None:
            raise DataError(target, f"the archive from {url} holds no category folder in MVTec "
                                    "layout (<category>/train/good), so nothing was kept; the "
                                    f"archive is still at {archive}")
        relative = root.relative_to(staging)
        (staging / PROVENANCE_FILE).write_text(json.dumps({
            "dataset": entry.name, "url": url, "sha256": actual,
            "verified": expected is not None or entry.layout is not None,
            "checked_by": "archive sha256" if expected is not None else (
                "per-file sha256" if entry.layout is not None else None),
            "archive": entry.archive_name(), "licence": entry.licence, "citation": entry.citation,
            "unpacked_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **laid_out,
        }, indent=2) + "\n")
        if target.is_dir():
            target.rmdir()  # checked empty above; os.replace cannot replace a folder on Windows
        try:
            os.replace(staging, target)
        except OSError:
            # Another process finished the same download first: use its copy.
            existing = find_data_root(target, entry.root_in_archive)
            if existing is None:
                raise
            shutil.rmtree(staging, ignore_errors=True)
            return existing
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target / relative


# --------------------------------------------------------------------------- Magnetic Tile Defects

SPLITS_DIR = Path(__file__).resolve().parent / "splits"
# ``sha256sum`` format, one line per image and mask the layout uses, keyed by the path in the
# GitHub repository (so ``sha256sum -c`` also checks a clone). Measured on a byte-identical copy.
MTD_MANIFEST = SPLITS_DIR / "mtd_sha256.txt"
# DifferNet's mtd_train_filenames.txt (marco-rudolph/differnet), verbatim: the 761 MT_Free
# images of train/good; the other 191 go to test/good, as in DifferNet's Table 2.
MTD_SPLIT = SPLITS_DIR / "mtd_differnet_train.txt"
MTD_COMMIT = "cc4eb530b57b9cb7225bf76023873043ffd50655"  # 2020-05-09, "Update README.md"
MTD_CATEGORY = "magnetic_tile"
_MTD_FILE = re.compile(r"^MT_(?P<folder>[A-Za-z]+)/Imgs/(?P<stem>[^/]+)\.(?P<suffix>jpg|png)$")


def read_sha256_manifest(path: Path | str) -> dict[str, str]:
    """``{relative path: sha256}`` from ``<hex>  <path>`` lines (``sha256sum``'s format)."""
    path = Path(path)
    digests: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        digest, _, name = line.partition("  ")
        if not _SHA256.match(digest) or not name or _unsafe_name(name) is not None:
            raise DataError(path, f"line {number} is not '<sha256>  <relative path>': {line!r}")
        digests[name.lstrip("*")] = digest  # "*" marks binary mode in sha256sum -b output
    return digests


def read_name_list(path: Path | str) -> set[str]:
    """File names listed one per line (blank lines skipped), e.g. a training split."""
    return {line.strip() for line in Path(path).read_text().splitlines() if line.strip()}


def mtd_layout_path(original: str, train_names: Collection[str]) -> str:
    """Where a file of the MTD repository goes in the MVTec layout, relative to the data root.

    ``MT_Free/Imgs/x.jpg`` -> ``magnetic_tile/train/good/x.jpg`` if ``x.jpg`` is in
    ``train_names``, else ``magnetic_tile/test/good/x.jpg``; ``MT_Crack/Imgs/x.jpg`` ->
    ``magnetic_tile/test/crack/x.jpg`` and its mask ``MT_Crack/Imgs/x.png`` ->
    ``magnetic_tile/ground_truth/crack/x_mask.png`` (MVTec's mask name). ValueError for any
    other path, MT_Free masks included (all zero; MVTec has no masks for good images).
    """
    match = _MTD_FILE.match(original)
    if match is None:
        raise ValueError(f"{original!r} is not MT_<Defect>/Imgs/<name>.jpg or .png")
    folder, stem, suffix = match["folder"].lower(), match["stem"], match["suffix"]
    name = f"{stem}.{suffix}"
    if folder == "free":
        if suffix != "jpg":
            raise ValueError(f"{original!r}: MT_Free masks are all zero and not part of the layout")
        return f"{MTD_CATEGORY}/{'train' if name in train_names else 'test'}/good/{name}"
    if suffix == "png":
        return f"{MTD_CATEGORY}/ground_truth/{folder}/{stem}_mask.png"
    return f"{MTD_CATEGORY}/test/{folder}/{name}"


def _mtd_plan(manifest: Path, split: Path) -> dict[str, tuple[str, str]]:
    """``{path in the repository: (layout path, sha256)}`` for every file the layout uses.

    Refuses (DataError naming the file) a manifest line the layout has no place for and a
    split name that is not an MT_Free image of the manifest: either means the two files
    shipped in ``kit/splits/`` disagree, and a silently smaller train set would follow.
    """
    digests = read_sha256_manifest(manifest)
    train = read_name_list(split)
    free = {PurePosixPath(name).name for name in digests if name.startswith("MT_Free/")}
    stray = sorted(train - free)
    if stray:
        raise DataError(split, f"{len(stray)} name(s) are not MT_Free images of {manifest}, "
                               f"e.g. {stray[0]!r}")
    try:
        return {name: (mtd_layout_path(name, train), digest) for name, digest in digests.items()}
    except ValueError as err:
        raise DataError(manifest, str(err)) from None


def _mtd_repository(unpacked: Path) -> Path:
    """The folder holding ``MT_Free/``: ``unpacked`` or a folder directly inside it.

    GitHub's archive wraps the repository in ``<repo>-<commit>/``; a mirror may not.
    """
    candidates = [unpacked, *sorted(p for p in unpacked.iterdir() if p.is_dir())]
    for candidate in candidates:
        if (candidate / "MT_Free").is_dir():
            return candidate
    raise DataError("MT_Free", "the archive has no MT_Free/ folder at its root or one level "
                               "down: it is not the Magnetic Tile Defects repository")


def layout_mtd(unpacked: Path, out: Path, progress: bool = False, *,
               manifest: Path | str | None = None, split: Path | str | None = None) -> dict:
    """Move MTD's files from the unpacked repository ``unpacked`` into ``out``, checking each.

    ``out`` then holds ``magnetic_tile/{train/good,test/<defect>,ground_truth/<defect>}`` (see
    :func:`mtd_layout_path`). Every file in ``manifest`` (default ``MTD_MANIFEST``) must be in
    the archive with its sha256, else DataError naming the file; files it does not list (the
    MT_Free masks, README, dataset.jpg) stay behind. ``split`` defaults to ``MTD_SPLIT``.
    Returns what the provenance file records about the check.
    """
    import pooch
    from tqdm.auto import tqdm

    manifest = Path(manifest or MTD_MANIFEST)
    split = Path(split or MTD_SPLIT)
    plan = _mtd_plan(manifest, split)
    repository = _mtd_repository(unpacked)
    for name in tqdm(sorted(plan), desc="checking MTD files", unit=" files",
                     disable=not progress, leave=False):
        relative, expected = plan[name]
        source = repository / name
        if not source.is_file():
            raise DataError(name, f"is missing from the archive (needed for {relative})")
        if source.is_symlink():
            # Moved elsewhere, a relative link points at something else than what was checked.
            raise DataError(name, f"is a symbolic link, not a file (needed for {relative})")
        actual = pooch.file_hash(str(source), alg="sha256")
        if actual != expected:
            raise DataError(name, f"has sha256 {actual}, but {manifest.name} lists {expected} "
                                  f"(needed for {relative}): the archive is damaged or not "
                                  f"snapshot {MTD_COMMIT}")
        target = out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
    return {"files_checked": len(plan), "manifest": manifest.name, "split": split.name,
            "snapshot": MTD_COMMIT}


register_dataset(DatasetEntry(
    name="mtd",
    # The repository's name really ends with a dot.
    url=f"https://github.com/abin24/Magnetic-tile-defect-datasets./archive/{MTD_COMMIT}.tar.gz",
    # GitHub makes the archive on request and has changed its compression before, so its bytes
    # (and digest) are not stable; the 1,736 per-file digests of MTD_MANIFEST pin the data.
    sha256=None,
    kind="tar",
    folder="mtd",
    citation=("Yibin Huang, Congying Qiu, Kui Yuan: Surface defect saliency of magnetic tile. "
              "The Visual Computer 36, 85-96 (2020)."),
    licence=("none stated: the repository has no licence file; its README says \"It is welcomed "
             "to use our dataset. And if it is used in your research, please cite our paper.\" "
             "Redistribution terms are not stated."),
    filename=f"Magnetic-tile-defect-datasets-{MTD_COMMIT[:12]}.tar.gz",
    description=("Magnetic Tile Defects: 952 good and 392 defective images (5 defect types, "
                 "pixel masks), about 53 MiB laid out, with DifferNet's train/test split"),
    layout=layout_mtd,
))


# --------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kit.download",
        description="Download a dataset (MVTec AD, Magnetic Tile Defects) with sha256 checks "
                    "and unpack it safely in MVTec layout.")
    parser.add_argument("dataset", help=f"one of: {', '.join(sorted(DATASETS))}")
    parser.add_argument("--dest", required=True,
                        help="folder to unpack into (the data lands in DEST/<dataset folder>)")
    parser.add_argument("--url", default=None,
                        help="mirror URL serving the identical archive (for mtd: the same "
                             "files) (also $KIT_<NAME>_URL)")
    parser.add_argument("--sha256", default=None, help="expected sha256 (replaces the registry's)")
    parser.add_argument("--allow-unverified", action="store_true",
                        help="download even when no sha256 is known (not recommended)")
    parser.add_argument("--cache", default=None,
                        help="where the archive is kept (default: $KIT_CACHE_DIR/downloads or .cache/downloads)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m kit.download mvtec|mtd --dest DIR [--url URL]``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        entry = get_dataset(args.dataset)
        root = download_dataset(entry, args.dest, url=args.url, sha256=args.sha256,
                                progress=not args.quiet, allow_unverified=args.allow_unverified,
                                cache=args.cache)
    except (DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{entry.name}: data root {root}")
    print(f"categories: {', '.join(list_categories(root))}")
    print(f"use it with: python -m kit fit --data-root {root} ...  (or export KIT_DATA_ROOT={root})")
    print(f"licence: {entry.licence}")
    print(f"please cite: {entry.citation}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A non-editable install (``pip install .``) carries every subpackage and data file, and its
registry finds every method file of ``kit/methods/`` without a list to keep in step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from kit.method import load_methods, method_modules

ROOT = Path(__file__).resolve().parents[1]


def test_every_method_file_is_registered():
    files = sorted(p.stem for p in (ROOT / "kit" / "methods").glob("[!_]*.py"))
    assert method_modules() == [f"kit.methods.{f}" for f in files]
    registered = {cls.__module__ for cls in load_methods().values()}
    assert registered == set(method_modules()), "a file in kit/methods/ registers no method"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", "-w", str(out), str(ROOT)], check=True, timeout=300,
                   capture_output=True)
    (built,) = out.glob("kit-*.whl")
    return built


def test_the_wheel_holds_every_file_of_the_package(wheel):
    with zipfile.ZipFile(wheel) as z:
        inside = {n for n in z.namelist() if n.startswith("kit/")}
    tracked = subprocess.run(["git", "ls-files", "kit"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    if not tracked:  # not a git checkout: every file of the package folder
        tracked = [str(p.relative_to(ROOT)) for p in (ROOT / "kit").rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts]
    missing = sorted(set(tracked) - inside)
    assert not missing, f"the wheel lacks {missing[:10]}"


def test_an_installed_wheel_finds_every_method(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target",
                    str(target), str(wheel)], check=True, timeout=300, capture_output=True)
    probe = ("import json, kit; from kit.method import load_methods; from kit.paths import "
             "SAMPLE_ROOT; print(json.dumps([kit.__file__, sorted(load_methods()), "
             "(SAMPLE_ROOT / 'magnetic_tile' / 'train' / 'good').is_dir()]))")
    env = {**os.environ, "PYTHONPATH": str(target)}
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    where, methods, sample = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(where).is_relative_to(target), f"imported {where}, not the installed wheel"
    assert methods == sorted(load_methods()) and sample

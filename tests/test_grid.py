"""The grid (``python -m kit bench``): planning, a tiny grid on a local Dask cluster over
loopback (every registered method), resuming, a failed job, and the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import make_toy_dataset
from fixtures_runs import tiny_overrides
from kit.cli import main
from kit.experiments import is_plain_variant, run_name
from kit.grid import (DEFAULT_ABLATION, GRID_LOG, WORKER_ENV_UNSET, GridJob, grid_record,
                      local_cluster, plan_grid, read_grid_log, run_grid, run_jobs)
from kit.method import load_methods
from kit.paths import source_commit
from kit.runstore import load_run

# every registered method (tiny_overrides fails for one without an entry in TINY)
TINY_ALL = {name: tiny_overrides(name) for name in load_methods()}


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_toy_dataset(tmp_path_factory.mktemp("grid") / "data", n_train=16, n_good=3,
                            n_defect=3)


def test_plan_covers_every_method_and_shares_runs(toy, tmp_path):
    jobs = plan_grid(tmp_path, toy, ["toy"])
    methods = sorted(load_methods())
    assert sorted({j.method for j in jobs}) == methods
    names = [Path(j.run_dir).name for j in jobs]
    assert len(names) == len(set(names)), "two jobs write the same run folder"
    for name in methods:
        paper = load_methods()[name].paper
        own = [j for j in jobs if j.method == name]
        served = {label for j in own for label in j.variants}
        for ablation in paper.ablations:  # every variant is served by a job, or read from one
            for v in ablation.variants:
                assert v.label in served or v.source is not None, (name, ablation.name, v.label)
        has_plain = any(is_plain_variant(v) for a in paper.ablations for v in a.variants)
        defaults = [j for j in own if j.ablation == DEFAULT_ABLATION]
        assert len(defaults) == (0 if has_plain else 1), name
    # the ablation command's folder names, so `kit ablation` and `kit bench` share runs
    nf = [j for j in jobs if j.method == "nf_bmr" and "n=2" in j.variants]
    assert len(nf) == 1 and "NF" in nf[0].variants
    assert Path(nf[0].run_dir).name == run_name("nf_bmr", "table5", "n=2", "quick", 0,
                                                nf[0].fingerprint)
    assert len(plan_grid(tmp_path, toy, ["toy"], seeds=(0, 1))) == 2 * len(jobs)
    # without ablations: one run per method, the method itself (a plain variant's run if any)
    plain = plan_grid(tmp_path, toy, ["toy"], ablations=False)
    assert sorted(j.method for j in plain) == methods
    assert {j.run_dir for j in plain} <= {j.run_dir for j in jobs}
    assert len(plan_grid(tmp_path, toy, ["toy", "toy"], ["padim", "padim"])) == 1


def test_plan_refuses_an_unknown_method(toy, tmp_path):
    with pytest.raises(Exception, match="nope"):
        plan_grid(tmp_path, toy, ["toy"], methods=["nope"])


@pytest.mark.slow
def test_tiny_grid_on_a_local_dask_cluster_resumes(toy, tmp_path):
    """Every registered method's default run on a LocalCluster over loopback, one worker; then
    the same grid again through the cluster's scheduler address makes nothing; a failing job
    is reported and does not stop the others."""
    import os

    runs = tmp_path / "runs"
    environ = dict(os.environ)
    jobs = plan_grid(runs, toy, ["toy"], ablations=False, extra_overrides=TINY_ALL)
    bad = GridJob(**{**jobs[0].__dict__, "overrides": {**jobs[0].overrides, "image_size": -5},
                     "run_dir": str(runs / "bad-run")})
    done = []
    result = run_grid(jobs + [bad], workers=1, threads=1, progress=False,
                      on_done=lambda job, summary, error: done.append((job.method, error)))
    assert len(result.made) == len(jobs) and not result.skipped
    assert [run for run, _ in result.failed] == [bad.run_dir]
    assert "image_size" in result.failed[0][1]
    assert len(done) == len(jobs) + 1
    record = grid_record(jobs + [bad], result, ablations=False, workers=1, scheduler=None,
                         cache_was_empty=False)
    assert (record["runs"], record["made"], record["failed"]) == (len(jobs) + 1, len(jobs), 1)
    assert record["methods"] == sorted(load_methods()) and not record["whole"]  # no ablations
    assert record["threads"] == 1
    assert 0 < record["run_seconds"] and record["seconds"] > 0 and result.started
    assert result.load_before is not None and result.load_after is not None
    for job in jobs:
        run = load_run(job.run_dir)
        assert run.method == job.method
        assert run.config["tags"] == job.tags  # a default run, or the plain variant's run
        assert job.ablation == DEFAULT_ABLATION or job.variants
        assert 0.0 <= run.metrics["image_auroc"] <= 1.0
    assert not (runs / "bad-run").exists()
    lost = jobs[0]
    shutil.rmtree(lost.run_dir)  # one run lost: the grid through a scheduler address remakes it
    with local_cluster(1) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        again = run_grid(jobs, scheduler=cluster.scheduler_address, threads=1, progress=False)
    assert [m["run_dir"] for m in again.made] == [lost.run_dir]
    assert sorted(again.skipped) == sorted(j.run_dir for j in jobs[1:])
    assert load_run(lost.run_dir).method == lost.method
    # Dask's worker settings (glibc trimming, one thread) stay out of this process, so the
    # kernels and processes it starts later (the notebooks' tests) run at full speed
    assert ({k: os.environ.get(k) for k in WORKER_ENV_UNSET}
            == {k: environ.get(k) for k in WORKER_ENV_UNSET})


def test_cli_dry_run_lists_the_grid(toy, tmp_path, capsys):
    code = main(["bench", "--data-root", str(toy), "--categories", "toy", "--runs-root",
                 str(tmp_path), "--methods", "padim", "nf_bmr", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    lines = [line for line in out.splitlines() if line.startswith("to make")]
    assert len(lines) == len(plan_grid(tmp_path, toy, ["toy"], ["padim", "nf_bmr"]))
    assert any("padim default" in line for line in lines)
    assert any("nf_bmr table5 n=2/NF" in line for line in lines)


@pytest.mark.slow
def test_cli_bench_logs_what_each_grid_cost(toy, tmp_path, capsys):
    """Each `kit bench` that makes runs appends its wall time to the runs root's grid log; a
    second one with nothing left to make adds nothing."""
    args = ["bench", "--data-root", str(toy), "--categories", "toy", "--runs-root",
            str(tmp_path), "--methods", "padim", "--no-ablations", "--threads", "1", "--quiet"]
    assert main(args) == 0
    (record,) = read_grid_log(tmp_path)
    assert (record["runs"], record["made"], record["skipped"]) == (1, 1, 0)
    assert record["methods"] == ["padim"] and not record["whole"] and record["threads"] == 1
    assert record["data_root"] == [str(toy.resolve())] and record["seconds"] > 0
    assert record["commit"] == source_commit() and record["commit"]  # the checkout's commit
    assert str(tmp_path / GRID_LOG) in capsys.readouterr().out
    assert main(args) == 0  # already complete: nothing made, nothing logged
    assert len(read_grid_log(tmp_path)) == 1


def test_cli_bench_names_an_unknown_category(toy, tmp_path, capsys):
    code = main(["bench", "--data-root", str(toy), "--categories", "nothing", "--runs-root",
                 str(tmp_path), "--methods", "padim", "--dry-run"])
    assert code == 2
    assert "nothing" in capsys.readouterr().err


def _shared_jobs(tmp_path: Path) -> list[dict]:
    """Two jobs of one shared fit, as the grid hands them to a worker."""
    return [{"method": "padim", "data_root": str(tmp_path), "category": "toy", "budget": "quick",
             "seed": 0, "fingerprint": "f", "run_dir": str(tmp_path / name), "overrides": {},
             "tags": {}, "ablation": DEFAULT_ABLATION, "variants": ()}
            for name in ("first", "second")]


def test_a_later_failure_in_a_shared_fit_keeps_the_runs_already_written(tmp_path, monkeypatch):
    """The second scoring of a shared fit fails after the first run was written: the first is
    reported made, only the second failed (the grid used to fail both)."""
    import json

    import kit.experiments

    def first_then_fail(method, data_root, category, targets, *args, on_written=None, **kw):
        out = Path(targets[0].out_dir)
        out.mkdir()
        (out / "metrics.json").write_text(json.dumps({"image_auroc": 0.75}))
        on_written(out)
        raise RuntimeError("scoring the second run")

    monkeypatch.setattr(kit.experiments, "fit_or_reuse_shared", first_then_fail)
    first, second = run_jobs(_shared_jobs(tmp_path), threads=1)
    assert first["image_auroc"] == 0.75 and "error" not in first
    assert second == {"run_dir": str(tmp_path / "second"),
                      "error": "RuntimeError: scoring the second run"}


def test_a_shared_fit_that_writes_nothing_raises(tmp_path, monkeypatch):
    import kit.experiments

    def fail(*args, **kw):
        raise RuntimeError("fit failed")

    monkeypatch.setattr(kit.experiments, "fit_or_reuse_shared", fail)
    with pytest.raises(RuntimeError, match="fit failed"):
        run_jobs(_shared_jobs(tmp_path), threads=1)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_commit_names_the_code_and_only_code_edits_make_it_dirty(tmp_path, monkeypatch):
    import subprocess

    import kit.paths

    def git(*args):
        return subprocess.run(["git", "-C", str(tmp_path), *args], check=True,
                              capture_output=True, text=True).stdout.strip()

    def commit_now():
        kit.paths.source_commit.cache_clear()  # asked once per process otherwise
        return kit.paths.source_commit()

    monkeypatch.setattr(kit.paths, "REPO_ROOT", tmp_path)
    try:
        assert commit_now() is None  # not a checkout
        git("init", "-q")
        for name in ("kit/method.py", "docs/report.md"):
            (tmp_path / name).parent.mkdir(exist_ok=True)
            (tmp_path / name).write_text("v1\n")
        git("add", ".")
        git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
        head = git("rev-parse", "--short=12", "HEAD")
        assert commit_now() == head
        (tmp_path / "docs/report.md").write_text("regenerated\n")  # results are not code
        assert commit_now() == head
        (tmp_path / "kit/method.py").write_text("edited\n")
        assert commit_now() == f"{head}+dirty"
        monkeypatch.setenv("PATH", str(tmp_path / "no-git-here"))
        assert commit_now() is None  # no git to ask
    finally:
        kit.paths.source_commit.cache_clear()

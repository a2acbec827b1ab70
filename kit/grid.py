"""The grid: methods x categories x ablation variants x seeds, run on Dask distributed.

``python -m kit bench`` plans one job per run folder and hands the jobs that are not already
complete to a Dask cluster: a local one by default (``LocalCluster`` on loopback, one worker
process per job slot), or a real cluster given by its scheduler address (``--scheduler
tcp://host:8786``). The kit never writes a scheduler of its own; on a real cluster every
worker must see the same runs root and data root (a shared file system).

Jobs are the runs :func:`kit.experiments.run_ablation` makes, with the same folder names, so a
grid and ``python -m kit ablation`` share their runs. A method's ablation variants that read
maps of one model share one job; variants sourced from another table add nothing. A method
also gets one run of its default settings (``<method>-default-...``) unless one of its
ablation runs already has no overrides. A job whose folder already holds a complete run of
today's settings on the same data is skipped, so an interrupted grid resumes where it stopped.
Jobs that differ only in scoring settings (DifferNet's Table 3 D-G: the number of test
transforms) go to one worker as one task and share one fit (:func:`fit_groups`).
``python -m kit bench`` appends what each grid that made runs cost (wall time, load average,
workers and threads) to ``<runs root>/grid_log.jsonl`` (:func:`grid_record`), which
``python -m kit report`` collects into ``docs/results/grid.json``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from kit.data import dataset_fingerprint
from kit.experiments import is_plain_variant, run_name, variant_groups, variant_tags
from kit.method import load_methods, method_class
from kit.pipeline import run_is_current
from kit.runstore import safe_run_dir

DEFAULT_ABLATION = "default"  # the tag of a method's run with its default settings
GRID_LOG = "grid_log.jsonl"  # in the runs root: one line per grid that made runs (its wall time)


@dataclass(frozen=True)
class GridJob:
    """One run folder of the grid: what to fit, on which data, and where it goes."""

    method: str
    data_root: str
    category: str
    budget: str
    seed: int
    ablation: str  # the paper's ablation name, or DEFAULT_ABLATION
    variants: tuple[str, ...]  # the variant labels the run serves (empty for a default run)
    overrides: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, Any] = field(default_factory=dict)
    run_dir: str = ""
    fingerprint: str = ""

    @property
    def label(self) -> str:
        variant = "/".join(self.variants) if self.variants else "default"
        return f"{self.method} {self.ablation} {variant} s{self.seed} ({self.category})"

    def is_complete(self) -> bool:
        """The folder already holds a run of these settings on this data."""
        return run_is_current(self.run_dir, self.method, self.budget, self.seed, self.overrides,
                              self.fingerprint)


def plan_grid(runs_root: Path | str, data_root: Path | str, categories: list[str],
              methods: list[str] | None = None, budget: str = "quick",
              seeds: tuple[int, ...] = (0,), ablations: bool = True,
              extra_overrides: dict[str, dict[str, Any]] | None = None) -> list[GridJob]:
    """Every job of the grid, in a stable order (method, category, ablation, variant, seed).

    ``methods``: registry names (default: every registered method). ``ablations=False`` plans
    each method's default run only. ``extra_overrides``: per method, settings added to every
    job of it (the tests' tiny settings; they are part of each run's config, so a run made with
    other settings is made again)."""
    names = list(dict.fromkeys(methods or sorted(load_methods())))  # a name given twice: one job
    for name in names:
        method_class(name)  # an unknown method fails here, before any work
    jobs = []
    for category in dict.fromkeys(categories):
        fingerprint = dataset_fingerprint(data_root, category)
        for name in names:
            extra = dict((extra_overrides or {}).get(name, {}))
            jobs += _method_jobs(name, runs_root, data_root, category, budget, seeds, ablations,
                                 extra, fingerprint)
    return jobs


def _method_jobs(name: str, runs_root, data_root, category: str, budget: str,
                 seeds: tuple[int, ...], ablations: bool, extra: dict[str, Any],
                 fingerprint: str) -> list[GridJob]:
    paper = method_class(name).paper
    planned: list[tuple[str, str, tuple[str, ...], dict[str, Any], dict[str, Any]]] = []
    for ablation in paper.ablations:
        for group in variant_groups([v for v in ablation.variants if v.source is None]):
            plain = any(is_plain_variant(v) for v in group)
            if ablations or plain:  # without ablations: only the run that is the method itself
                planned.append((ablation.name, group[0].label, tuple(v.label for v in group),
                                group[0].overrides, variant_tags(ablation.name, group)))
    if not any(is_plain_variant(v) for a in paper.ablations for v in a.variants):
        planned.insert(0, (DEFAULT_ABLATION, "-", (), {}, {"ablation": DEFAULT_ABLATION}))
    planned = list({p[0] + "/" + p[1]: p for p in planned}.values())
    jobs = []
    for ablation_name, first, labels, overrides, tags in planned:
        for seed in seeds:
            folder = (f"{name}-{DEFAULT_ABLATION}-{budget}-s{seed}-{fingerprint[:8]}"
                      if ablation_name == DEFAULT_ABLATION
                      else run_name(name, ablation_name, first, budget, seed, fingerprint))
            jobs.append(GridJob(method=name, data_root=str(Path(data_root).resolve()),
                                category=category, budget=budget, seed=seed,
                                ablation=ablation_name, variants=labels,
                                overrides={**extra, **overrides}, tags=tags,
                                run_dir=str(safe_run_dir(runs_root, folder)),
                                fingerprint=fingerprint))
    return jobs


def run_job(job: dict[str, Any], threads: int | None = None) -> dict[str, Any]:
    """Fit one job (a :class:`GridJob` as a dict, so any worker can unpickle it without the
    class); returns what the grid reports. Runs on a Dask worker, or in-process."""
    return run_jobs([job], threads)[0]


def run_jobs(jobs: list[dict[str, Any]], threads: int | None = None) -> list[dict[str, Any]]:
    """:func:`run_job` of jobs that share one fit (:func:`fit_groups`: same method, data, seed
    and fit settings); one summary per job, in order. ``seconds`` of the first run made counts
    the fit, those of the others only their own scoring. When a later run of the group fails
    after an earlier one was written, the written runs keep their summaries and the others get
    ``{"run_dir", "error"}``; when none was written, the error is raised."""
    import torch
    from threadpoolctl import threadpool_limits

    from kit.experiments import fit_or_reuse_shared
    from kit.pipeline import RunTarget

    first = jobs[0]
    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    start = time.perf_counter()
    seconds: dict[str, float] = {}

    def written(path: Path) -> None:
        nonlocal start
        now = time.perf_counter()
        seconds[str(path)] = round(now - start, 1)
        start = now

    # Dask's nanny starts workers with OMP/MKL/OpenBLAS at one thread; numpy and scikit-learn
    # get the job's threads back, so a grid run costs what `python -m kit fit` costs
    error = None
    with threadpool_limits(threads):
        try:
            fit_or_reuse_shared(first["method"], first["data_root"], first["category"],
                                [RunTarget(job["run_dir"], job["overrides"], job["tags"])
                                 for job in jobs],
                                budget=first["budget"], seed=first["seed"], progress=False,
                                fingerprint=first["fingerprint"], on_written=written)
        except Exception as err:  # noqa: BLE001 - runs written before it stay made
            if not seconds:
                raise  # nothing written: the task failed as a whole, with its traceback
            error = f"{type(err).__name__}: {err}"
    summaries = []
    for job in jobs:
        if error and str(Path(job["run_dir"])) not in seconds and not GridJob(**job).is_complete():
            summaries.append({"run_dir": job["run_dir"], "error": error})
            continue
        metrics = json.loads((Path(job["run_dir"]) / "metrics.json").read_text())
        summaries.append({"run_dir": job["run_dir"],
                          "seconds": seconds.get(str(Path(job["run_dir"])), 0.0),
                          **{k: metrics.get(k) for k in ("image_auroc", "pixel_auroc", "aupro")}})
    return summaries


def fit_groups(jobs: list[GridJob]) -> list[list[GridJob]]:
    """Jobs grouped so that each group needs one fit (in plan order): the same method, data,
    budget and seed, with overrides that differ only in scoring settings
    (:func:`kit.experiments.shared_fit_groups`, the rule ``kit ablate`` shares fits by)."""
    from kit.experiments import shared_fit_groups

    same_data: dict[tuple, list[int]] = {}  # indices into jobs
    for i, job in enumerate(jobs):
        key = (job.method, job.data_root, job.category, job.budget, job.seed, job.fingerprint)
        same_data.setdefault(key, []).append(i)
    groups = [[indices[i] for i in shared]
              for indices in same_data.values()
              for shared in shared_fit_groups(jobs[indices[0]].method, jobs[indices[0]].budget,
                                              jobs[indices[0]].seed,
                                              [jobs[i].overrides for i in indices])]
    return [[jobs[i] for i in group] for group in sorted(groups, key=min)]  # plan order


@dataclass
class GridResult:
    """What a grid did: runs made, runs skipped (already complete), jobs that failed."""

    made: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (run folder, error)
    seconds: float = 0.0
    started: str = ""  # local time the grid began, ISO format
    load_before: float | None = None  # 1-minute load average as it began and as it ended:
    load_after: float | None = None  # a busy machine makes every run slower
    threads: int | None = None  # torch threads each job ran with


# Dask's nanny starts each worker with these set (distributed.nanny.pre-spawn-environ), and
# writes them into the environment of the process that starts the cluster as well, so every
# process started from it later (a notebook's kernel, the next test's) inherits them:
# - MALLOC_TRIM_THRESHOLD_=65536 makes glibc hand freed memory back at once, so every forward
#   pass maps fresh pages again: a method's predict ran about 2x slower in a worker than in a
#   plain process (benchmarks/bench_grid_worker.py measures it);
# - *_NUM_THREADS=1 starts torch and numpy on one thread in those later processes.
# A job sets its own threads (run_job), so the local cluster starts its workers with none of them.
WORKER_ENV_UNSET = ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                    "OPENBLAS_NUM_THREADS")


def local_cluster(workers: int = 1):
    """A ``dask.distributed.LocalCluster`` on loopback: ``workers`` processes, one job each,
    started without Dask's worker environment (:data:`WORKER_ENV_UNSET`)."""
    import dask
    from dask.distributed import LocalCluster

    # a job that kills its worker (out of memory) fails once instead of being refitted 3 times
    dask.config.set({"distributed.scheduler.allowed-failures": 0})
    # None unsets a variable (distributed.nanny._get_env_variables); the nanny reads the
    # setting when the cluster starts it
    with dask.config.set({f"distributed.nanny.pre-spawn-environ.{name}": None
                          for name in WORKER_ENV_UNSET}):
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                            host="127.0.0.1", dashboard_address=None)


def run_grid(jobs: list[GridJob], scheduler: str | None = None, workers: int = 1,
             threads: int | None = None, progress: bool = True,
             on_done: Callable[[GridJob, dict[str, Any] | None, str | None], None] | None = None,
             ) -> GridResult:
    """Run the jobs that are not complete on a Dask cluster; a failed job does not stop the rest.

    ``scheduler``: a Dask scheduler address (``tcp://host:8786``); None starts a local cluster
    of ``workers`` processes for the grid and closes it after. ``threads``: torch threads per
    job (default: this machine's cores divided by ``workers``; on a real cluster give it)."""
    from dask.distributed import Client, as_completed
    from tqdm.auto import tqdm

    from kit.paths import source_commit

    source_commit()  # asked now, for the grid's record: the code the grid was started with
    result = GridResult(started=time.strftime("%Y-%m-%dT%H:%M:%S"), load_before=_load())
    start = time.perf_counter()
    todo = []
    for job in jobs:
        if job.is_complete():
            result.skipped.append(job.run_dir)
        else:
            todo.append(job)
    if progress:
        print(f"grid: {len(jobs)} runs, {len(result.skipped)} already complete, {len(todo)} to make"
              + (f" on {scheduler}" if scheduler else f" on a local cluster of {workers} worker(s)"))
    if not todo:
        result.seconds, result.load_after = time.perf_counter() - start, _load()
        return result
    threads = result.threads = threads or max(1, (os.cpu_count() or 1) // max(1, workers))
    cluster = None if scheduler else local_cluster(workers)
    client = Client(scheduler if scheduler else cluster)
    try:
        # one task per fit: runs that differ only in scoring settings share it (fit_groups);
        # priorities keep the plan's order (Dask runs higher ones first)
        groups = fit_groups(todo)
        futures = {client.submit(run_jobs, [asdict(job) for job in group], threads,
                                 key=f"kit-{Path(group[0].run_dir).name}", pure=False,
                                 priority=len(groups) - i): group
                   for i, group in enumerate(groups)}
        bar = tqdm(total=len(todo), desc="grid", unit="run", disable=not progress)
        for future in as_completed(futures):
            group = futures[future]
            try:
                summaries = future.result()
            except Exception as err:  # noqa: BLE001 - reported, and the rest of the grid goes on
                # the whole task failed: every run of it, as run_jobs marks the runs it did
                # not write when a later run of a shared fit fails
                summaries = [{"run_dir": job.run_dir, "error": f"{type(err).__name__}: {err}"}
                             for job in group]
            for job, summary in zip(group, summaries):
                if "error" in summary:
                    result.failed.append((job.run_dir, summary["error"]))
                    if on_done:
                        on_done(job, None, summary["error"])
                    bar.write(f"failed: {job.label}: {summary['error']}")
                    continue
                result.made.append(summary)
                if on_done:
                    on_done(job, summary, None)
                shared = " (fit shared)" if len(group) > 1 else ""
                bar.write(f"done: {job.label} in {summary['seconds']:.0f} s{shared} "
                          f"(image AUROC {_fmt(summary['image_auroc'])}, "
                          f"pixel AUROC {_fmt(summary['pixel_auroc'])})")
            bar.update(len(group))
        bar.close()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    result.seconds, result.load_after = time.perf_counter() - start, _load()
    return result


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # not every platform has a load average
        return None


def feature_cache_is_empty() -> bool:
    """No cached backbone features yet (``kit.cache``): a grid begun so pays every forward."""
    from kit.paths import cache_dir

    folder = cache_dir() / "features"
    return not folder.is_dir() or not any(folder.iterdir())


def grid_record(jobs: list[GridJob], result: GridResult, *, ablations: bool, workers: int,
                scheduler: str | None, cache_was_empty: bool) -> dict[str, Any]:
    """What one grid cost, as data: its wall time beside the runs' own seconds, how it ran and
    how busy the machine was. ``whole``: every registered method with every ablation variant,
    each run made by this grid (nothing skipped or failed), so the wall time is the grid's.
    """
    import torch

    import kit
    from kit.paths import source_commit

    methods = sorted({job.method for job in jobs})
    return {
        "created": result.started, "budget": sorted({job.budget for job in jobs}),
        "data_root": sorted({job.data_root for job in jobs}),
        "categories": sorted({job.category for job in jobs}),
        "fingerprints": sorted({job.fingerprint for job in jobs}),
        "methods": methods, "ablations": ablations, "seeds": sorted({job.seed for job in jobs}),
        "whole": (ablations and methods == sorted(load_methods()) and bool(result.made)
                  and not result.skipped and not result.failed),
        "runs": len(jobs), "made": len(result.made), "skipped": len(result.skipped),
        "failed": len(result.failed), "seconds": round(result.seconds, 1),
        "run_seconds": round(sum(m["seconds"] for m in result.made), 1),
        "workers": workers if scheduler is None else None,
        "threads": result.threads,
        "cluster": "local" if scheduler is None else "scheduler", "cpu_count": os.cpu_count(),
        "load_before": result.load_before, "load_after": result.load_after,
        "feature_cache_empty": cache_was_empty, "kit_version": kit.__version__,
        "commit": source_commit(),  # which code made the grid (kit.paths.source_commit)
        "torch": torch.__version__,
    }


def append_grid_log(runs_root: Path | str, record: dict[str, Any]) -> Path:
    """Append ``record`` as one line of ``<runs_root>/grid_log.jsonl``; returns the file."""
    path = Path(runs_root) / GRID_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
    return path


def read_grid_log(runs_root: Path | str) -> list[dict[str, Any]]:
    """The records of ``<runs_root>/grid_log.jsonl``, oldest first; a line that is not a JSON
    object with a wall time (a grid killed mid-write) is left out."""
    path = Path(runs_root) / GRID_LOG
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("seconds"), (int, float)):
            records.append(record)
    return records

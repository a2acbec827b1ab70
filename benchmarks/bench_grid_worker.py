"""One workload timed in a plain process and in Dask workers: what a grid job pays for its worker.

The workload is the bare backbone forward every method runs while it scores a test split
(EfficientNet-Lite0 through stage 4 at 256 px, real sample images, batches of 8, 2 threads,
torch.inference_mode), timed in

- this process (what ``python -m kit fit`` pays),
- a worker of ``kit.grid.local_cluster`` (what ``python -m kit bench`` pays),
- a worker of Dask's own ``LocalCluster`` (its nanny starts workers with
  ``MALLOC_TRIM_THRESHOLD_=65536`` and one thread for OpenMP, MKL and OpenBLAS),
- this process again with ``MALLOC_TRIM_THRESHOLD_=65536`` (a fresh interpreter), to name the
  setting that costs.

Each worker job sets 2 torch threads itself, as ``kit.grid.run_job`` does. Prints ms per image
(median of the repeats) and each setting's ratio to the plain process, with the load average.

    .venv/bin/python benchmarks/bench_grid_worker.py [--repeats 5] [--threads 2]

Run it on a quiet machine (check ``uptime``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the repo


def backbone_ms_per_image(repeats: int, threads: int) -> float:
    """Median ms per image of the bare Lite0 forward over 32 sample test images, batches of 8
    (``bench_allocator.forward``'s workload)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # also in a Dask worker
    from bench_allocator import forward

    return forward(8, repeats, threads, 256)["ms_per_image"]


def in_worker(cluster, repeats: int, threads: int) -> float:
    from dask.distributed import Client

    with Client(cluster) as client:
        return client.submit(backbone_ms_per_image, repeats, threads, pure=False).result()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    from dask.distributed import LocalCluster

    from kit.grid import local_cluster

    print(f"load before {os.getloadavg()[0]:.2f}")
    rows = {"plain process": backbone_ms_per_image(args.repeats, args.threads)}
    with local_cluster(1) as cluster:
        rows["kit.grid.local_cluster worker"] = in_worker(cluster, args.repeats, args.threads)
    env = dict(os.environ)  # Dask's cluster below writes its worker settings into this process
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        rows["dask LocalCluster worker (its defaults)"] = in_worker(cluster, args.repeats,
                                                                    args.threads)
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import bench_grid_worker as b; print(b.backbone_ms_per_image({args.repeats}, "
            f"{args.threads}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**env, "MALLOC_TRIM_THRESHOLD_": "65536"})
    rows["plain process, MALLOC_TRIM_THRESHOLD_=65536"] = float(out.stdout.split()[-1])
    base = rows["plain process"]
    for name, ms in rows.items():
        print(f"{name:<48} {ms:7.1f} ms/image  x{ms / base:.2f}")
    print(f"load after {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

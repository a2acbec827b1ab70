"""Time the dashboard: first render of the Compare page and switching test images.

    .venv/bin/python benchmarks/bench_app.py [--runs-root DIR] [--switches 10] [--browser]

Runs: ``--runs-root`` (any run store), else two real runs on the embedded MTD sample made
once into ``<cache dir>/bench_app_runs`` (PaDiM, ImageNet Lite0 at 256 px and an untrained
backbone at 64 px). Measured with Streamlit's AppTest in this process:

- first render, cold process: the first run of the app in a fresh process (imports torch,
  reads the runs, decompresses their maps);
- first render, cached runs: a new session (a new AppTest) once the runs are in the caches,
  which is what a learner opening the dashboard on a running server waits for;
- image switch: picking another test image (each image seen for the first time; then again).

``--browser`` adds the same two numbers in a real headless Chromium against
``streamlit run app.py`` (page load to every chart drawn), which includes the browser's work.
Not a test: run it by hand. Target on 2 cores: first render < 3 s, switch < 0.3 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


RUNS = (("padim_lite0_256", {}), ("padim_untrained_64", {"weights": "none", "image_size": 64}))


def make_runs(root: Path) -> None:
    """Two real runs on the embedded sample (called in a child process, see ``ensure_runs``)."""
    from kit.paths import DEFAULT_CATEGORY, SAMPLE_ROOT
    from kit.pipeline import run_experiment

    for name, overrides in RUNS:
        run_experiment("padim", SAMPLE_ROOT, DEFAULT_CATEGORY, root / name, overrides=overrides,
                       progress=False, overwrite=True)


def ensure_runs(root: Path) -> Path:
    """The benchmark runs under ``root``, made once in a child process so that this process
    stays cold (no torch imported yet) for the first-render measurement."""
    import subprocess

    if all((root / name / "metrics.json").is_file() for name, _ in RUNS):
        return root
    print(f"making benchmark runs under {root} (a few minutes, once)")
    subprocess.run([sys.executable, __file__, "--make-runs", str(root)], check=True)
    return root


def bench_apptest(switches: int) -> dict[str, float]:
    from streamlit.testing.v1 import AppTest

    app = str(REPO / "app.py")
    start = time.perf_counter()
    at = AppTest.from_file(app, default_timeout=300).run()
    cold = time.perf_counter() - start
    assert not at.exception, [e.value for e in at.exception]

    warm = []
    for _ in range(3):
        start = time.perf_counter()
        at = AppTest.from_file(app, default_timeout=300).run()
        warm.append(time.perf_counter() - start)
    images = at.selectbox(key="cmp_image").options
    names = [o.split("  ")[0] for o in images]
    order = names[1:switches + 1]
    first, again = [], []
    for timings, pass_names in ((first, order), (again, order)):
        for name in pass_names:
            at.selectbox(key="cmp_image").set_value(name)
            start = time.perf_counter()
            at.run()
            timings.append(time.perf_counter() - start)
            assert not at.exception, [e.value for e in at.exception]
    return {"first render, cold process (s)": cold,
            "first render, cached runs (s, median of 3)": statistics.median(warm),
            "image switch, first visit (s, median)": statistics.median(first),
            "image switch, first visit (s, max)": max(first),
            "image switch, revisit (s, median)": statistics.median(again)}


_PROBE = """
const [text, charts] = arguments;
const drawn = [...document.querySelectorAll('[data-testid="stPlotlyChart"]')]
    .filter(c => c.querySelector('.main-svg')).length;
const running = document.querySelector('[data-testid="stStatusWidgetRunningIcon"]');
return document.body.innerText.includes(text) && drawn >= charts && !running;
"""


def _until(driver, text: str, charts: int, timeout: float = 300) -> None:
    """Poll in the page itself (one round trip per poll) until ``text`` shows, ``charts``
    plotly charts are drawn and the script has stopped."""
    deadline = time.perf_counter() + timeout
    while not driver.execute_script(_PROBE, text, charts):
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{text!r} / {charts} charts did not appear")
        time.sleep(0.02)


def bench_browser(runs_root: Path) -> dict[str, float]:
    """Page load to all charts drawn, and an image switch, in headless Chromium."""
    import shutil
    import subprocess
    import tempfile
    import urllib.request

    import test_app_browser as B
    from fixtures_server import free_port
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    port = free_port()
    tmp = Path(tempfile.mkdtemp())
    env = {**os.environ, "KIT_RUNS_ROOT": str(runs_root)}
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1",
         "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    os.environ["SE_OFFLINE"] = "true"
    options = Options()
    options.binary_location = str(B.CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                "--window-size=1600,1300", f"--user-data-dir={tmp / 'chromium'}"):
        options.add_argument(arg)
    driver = None
    try:
        for _ in range(180):
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                time.sleep(0.5)
        driver = webdriver.Chrome(service=Service(str(B.CHROMEDRIVER)), options=options)
        out = {}
        for label in ("cold server", "cached runs"):
            start = time.perf_counter()
            driver.get(url)
            _until(driver, "Compare runs on one test image", 0)
            out[f"browser: first content, {label} (s)"] = time.perf_counter() - start
            _until(driver, "pixel threshold", 4)  # a map and an overlay per run
            out[f"browser: every chart drawn, {label} (s)"] = time.perf_counter() - start
        switch = []
        for option in ("crack/", "fray/", "break/"):
            B.choose(driver, "Test image", option)  # the click on the option starts the clock
            start = time.perf_counter()
            _until(driver, f"defect type {option[:-1]}", 4)
            switch.append(time.perf_counter() - start)
        out["browser: image switch, click to charts drawn (s, median of 3)"] = statistics.median(switch)
        return out
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=15)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-root", default=None)
    parser.add_argument("--switches", type=int, default=10)
    parser.add_argument("--browser", action="store_true", help="also time a real headless Chromium")
    parser.add_argument("--make-runs", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_runs:
        return make_runs(Path(args.make_runs))

    from kit.paths import cache_dir

    root = Path(args.runs_root) if args.runs_root else ensure_runs(cache_dir() / "bench_app_runs")
    os.environ["KIT_RUNS_ROOT"] = str(root)
    print(f"runs root: {root}  (machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})")
    results = bench_apptest(args.switches)
    if args.browser:
        results.update(bench_browser(root))
    for name, seconds in results.items():
        print(f"{name:<55}{seconds:8.3f}")
    print("targets: first render < 3 s (cached runs), image switch < 0.3 s")


if __name__ == "__main__":
    main()

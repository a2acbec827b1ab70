"""End to end: `streamlit run app.py` driven by a real headless Chromium through every page.

The test starts the server on a free port with KIT_RUNS_ROOT pointing at real runs on the
embedded sample (plus a broken folder), drives /usr/bin/chromium with Selenium (no Selenium
Manager, no network), waits for known elements on each page, fails on any Streamlit exception
box, and saves screenshots to artifacts/screenshots/<page>.png.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import make_toy_dataset
from fixtures_runs import broken_run, sample_runs
from kit.paths import REPO_ROOT
from kit.runstore import load_run

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SHOTS = REPO_ROOT / "artifacts" / "screenshots"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists() or not CHROMEDRIVER.exists(),
                       reason="needs Debian's chromium and chromium-driver "
                              "(apt-get install -y chromium chromium-driver)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser") / "runs"
    sample_runs(root)
    broken_run(root)
    return root


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> Path:
    """A tiny dataset for the training step (the app offers it as the KIT_DATA_ROOT)."""
    return make_toy_dataset(tmp_path_factory.mktemp("toy") / "data", n_train=20)


@pytest.fixture(scope="module")
def server(runs_root, toy_data, tmp_path_factory):
    """Base URL of a dashboard server on a free port (stopped after the module)."""
    tmp = tmp_path_factory.mktemp("server")
    port = _free_port()
    env = {**os.environ, "KIT_RUNS_ROOT": str(runs_root), "KIT_CACHE_DIR": str(tmp / "cache"),
           "KIT_DATA_ROOT": str(toy_data)}
    log = open(tmp / "streamlit.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1",
         "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"streamlit did not start; log:\n{(tmp / 'streamlit.log').read_text()}")
        time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never try to download a driver
    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                "--disable-dev-shm-usage", "--window-size=1600,1300",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def _css(driver, selector: str):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def _no_exception(driver, page: str) -> None:
    boxes = _css(driver, '[data-testid="stException"]')
    if boxes:
        shoot(driver, f"FAILED_{page.replace(' ', '_')}")
        pytest.fail(f"{page}: the app shows an exception: {boxes[0].get_attribute('innerText')[:2000]}")


def wait_for(driver, page: str, texts=(), charts: int = 0, timeout: float = 90,
             absent=()) -> None:
    """Wait until every text is on the page and no ``absent`` text is, at least ``charts``
    plotly charts have drawn and the script has finished; fail early on an exception box."""
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.time() + timeout
    missing, drawn, running = list(texts), 0, True
    while True:
        _no_exception(driver, page)
        try:
            body = driver.find_element("tag name", "body").text
            missing = [t for t in texts if t not in body] + [f"not {t}" for t in absent if t in body]
            drawn = sum(1 for c in _css(driver, '[data-testid="stPlotlyChart"]')
                        if c.find_elements("css selector", ".main-svg"))
            running = _css(driver, '[data-testid="stStatusWidgetRunningIcon"], '
                                   '[data-testid="stSpinner"]')
        except StaleElementReferenceException:  # the app redrew while we looked: look again
            time.sleep(0.25)
            continue
        if not missing and drawn >= charts and not running:
            time.sleep(0.5)  # let the last frame paint before the screenshot
            _no_exception(driver, page)
            return
        if time.time() > deadline:
            pytest.fail(f"{page}: timed out; missing texts {missing}, {drawn}/{charts} charts, "
                        f"running={bool(running)}")
        time.sleep(0.25)


STEPS: dict[str, float] = {}  # seconds from the start of the walk to each screenshot


def shoot(driver, name: str) -> Path:
    STEPS[name] = round(time.perf_counter() - STEPS.setdefault("_start", time.perf_counter()), 1)
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    # tall window so the whole page is in the picture
    height = driver.execute_script(
        "const m = document.querySelector('[data-testid=\"stMain\"]') || document.body;"
        "return Math.max(m.scrollHeight, document.body.scrollHeight);")
    driver.set_window_size(1600, min(max(int(height) + 150, 1000), 4500))
    time.sleep(0.5)
    driver.save_screenshot(str(path))
    driver.set_window_size(1600, 1300)
    return path


def choose(driver, label: str, option: str) -> None:
    """Pick the first option containing ``option`` in the selectbox labelled ``label``."""
    from selenium.webdriver.common.by import By

    box = next(b for b in _css(driver, '[data-testid="stSelectbox"]') if label in b.text)
    field = box.find_element(By.CSS_SELECTOR, "input")
    field.click()
    field.send_keys(option)  # the list is virtualised: filter it so the option is drawn
    deadline = time.time() + 10
    while time.time() < deadline:
        options = [o for o in _css(driver, '[role="option"]') if option in o.text]
        if options:
            options[0].click()
            return
        time.sleep(0.2)
    pytest.fail(f"option {option!r} not offered in {label!r}")


def type_into(driver, label: str, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = next(b for b in _css(driver, '[data-testid="stTextInput"]') if label in b.text)
    field = box.find_element(By.CSS_SELECTOR, "input")
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.DELETE)
    field.send_keys(text, Keys.ENTER)


def go(driver, page: str) -> None:
    """Click the sidebar link of ``page`` (same session: choices carry over)."""
    # the text starts with the material icon's ligature name (e.g. "show_chart")
    links = [a for a in _css(driver, '[data-testid="stSidebarNavLink"]') if a.text.strip().endswith(page)]
    assert links, f"no navigation link {page!r}"
    links[0].click()


def selected_runs(driver) -> list[str]:
    """Labels of the runs chosen in the 'Runs' picker."""
    return [b.get_attribute("aria-label")[len("Remove "):]
            for b in _css(driver, '[data-testid="stMultiSelect"] button[aria-label^="Remove padim"]')]


def click_button(driver, text: str) -> None:
    buttons = [b for b in _css(driver, 'button') if b.text.strip() == text]
    assert buttons, f"no button {text!r}"
    buttons[0].click()


# ---------------------------------------------------------------------------------------------
# the walk through every page
# ---------------------------------------------------------------------------------------------

def test_every_page_in_chromium(server, browser, runs_root, tmp_path):
    for stale in SHOTS.glob("FAILED_*.png"):  # from an earlier failed walk
        stale.unlink()
    timings = {}
    start = STEPS["_start"] = time.perf_counter()
    browser.get(f"{server}/")
    wait_for(browser, "compare", ["Compare runs on one test image", "padim_lite0_128",
                                  "padim_untrained_64", "broken run folder", "pixel threshold"],
             charts=4, timeout=120)  # a map and an overlay per run
    timings["compare_first_render_s"] = round(time.perf_counter() - start, 2)
    shoot(browser, "compare")

    # switch to a defect image by hand, as a learner would
    choose(browser, "Test image", "crack/")
    wait_for(browser, "compare (crack)", ["defect type crack"], charts=4)
    shoot(browser, "compare_crack")

    # drop the untrained run: the choice must follow the learner to the next pages
    _css(browser, 'button[aria-label^="Remove padim_untrained_64"]')[0].click()
    wait_for(browser, "compare (one run)", ["padim_lite0_128"], charts=2,
             absent=["padim_untrained_64"])
    assert not any("untrained" in r for r in selected_runs(browser))

    go(browser, "Curves")
    wait_for(browser, "curves", ["Curves and metrics", "Metrics", "Image ROC", "Per-region overlap",
                                 "Image scores: normal vs defective"], charts=5)
    assert [r.split()[0] for r in selected_runs(browser)] == ["padim_lite0_128"], "choice lost"
    shoot(browser, "curves")

    start = time.perf_counter()
    go(browser, "Feature space")
    # first UMAP in a fresh install compiles numba code: allow for it
    wait_for(browser, "features", ["Feature spaces", "t-SNE", "UMAP", "perplexity", "seed 0",
                                   "one round blob"], charts=2, timeout=150)
    timings["features_first_render_s"] = round(time.perf_counter() - start, 2)
    shoot(browser, "features")

    go(browser, "Ablations")
    from kit.method import load_methods

    declared = [a for cls in load_methods().values() for a in cls.ablations]
    if declared:  # e.g. DifferNet's Table 3: charts, and the commands for the missing runs
        wait_for(browser, "ablations", ["Ablations: the papers' tables", declared[0].title,
                                        "Missing runs", "python -m kit"], charts=len(declared))
    else:
        wait_for(browser, "ablations", ["Ablations", "No registered method declares an ablation"])
    shoot(browser, "ablations")

    go(browser, "Try it")
    wait_for(browser, "try it", ["Try it", "Score your own image", "Train a quick run",
                                 "Skipped a broken run folder"])
    upload = _css(browser, '[data-testid="stFileUploaderDropzoneInput"]')[0]
    # the defect the real run is surest about: the overlay then shows what a hit looks like
    rows = load_run(runs_root / "padim_lite0_128").scores
    image = Path(max((r for r in rows if r["label"]), key=lambda r: r["score"])["path"])
    upload.send_keys(str(image))
    wait_for(browser, "try it (upload)", ["scored by 2 run(s)", "padim_lite0_128", "threshold"],
             charts=4, timeout=120)
    shoot(browser, "try_it_scored")

    junk = tmp_path / "notes.png"
    junk.write_bytes(b"this is not an image at all")
    _css(browser, '[data-testid="stFileUploaderDropzoneInput"]')[0].send_keys(str(junk))
    wait_for(browser, "try it (bad upload)", ["not an image PIL can read"])
    shoot(browser, "try_it_bad_upload")

    choose(browser, "Data root", "data (")  # the toy dataset: training takes seconds
    wait_for(browser, "try it (toy data)")
    type_into(browser, "Settings (optional)", "weights=none image_size=64")
    type_into(browser, "Run name", "browser_quick_run")
    time.sleep(1.0)
    click_button(browser, "Train")
    wait_for(browser, "try it (train)", ["Run written to"], timeout=150)
    shoot(browser, "try_it_trained")
    assert (runs_root / "browser_quick_run" / "metrics.json").is_file()

    # first start: point the sidebar at an empty runs root
    empty = tmp_path / "empty_runs"
    empty.mkdir()
    type_into(browser, "Runs root", str(empty))
    wait_for(browser, "first start", ["No runs yet", "make demo",
                                      "Make quick demo runs on the embedded sample"])
    shoot(browser, "first_start")

    (REPO_ROOT / "artifacts" / "browser_timings.json").write_text(json.dumps(timings, indent=2))
    print("browser timings:", timings, "steps:", STEPS)

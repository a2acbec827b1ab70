"""End to end: `streamlit run app.py` driven by a real headless Chromium through every page.

The test starts the server on a free port with KIT_RUNS_ROOT pointing at runs on the embedded
sample (a real PaDiM run, a tiny untrained run of every registered method, a broken folder),
drives /usr/bin/chromium with Selenium (no Selenium Manager, no network), waits for known
elements on each page, fails on any Streamlit exception box or on a label cut at 1280 or
1600 px, and saves screenshots to artifacts/screenshots/<page>.png.

Waits are conditions, never fixed sleeps: texts present or absent, charts drawn, the script
finished (``data-test-script-state``), nothing stale, and the page the same on two looks in a
row. Every lookup is retried while the app redraws the element (a stale reference).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from conftest import make_toy_dataset
from fixtures_runs import broken_run, sample_runs
from fixtures_server import dashboard
from kit.app.compare import image_table
from kit.app.common import MAX_DEFAULT_RUNS
from kit.method import load_methods
from kit.paths import REPO_ROOT, python_command
from kit.runstore import load_run

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SHOTS = REPO_ROOT / "artifacts" / "screenshots"
WIDTH, HEIGHT = 1600, 1300  # the window; labels must also be whole at NARROW
NARROW = 1280

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists() or not CHROMEDRIVER.exists(),
                       reason="needs Debian's chromium and chromium-driver "
                              "(apt-get install -y chromium chromium-driver)"),
]


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
    env = {"KIT_RUNS_ROOT": str(runs_root), "KIT_CACHE_DIR": str(tmp / "cache"),
           "KIT_DATA_ROOT": str(toy_data)}
    # no file watcher: a file saved meanwhile (others edit kit/) must not reload modules mid-walk;
    # the shipped watcher settings are checked in tests/test_app_config.py
    with dashboard(env, tmp / "streamlit.log", "--server.fileWatcherType", "none") as (url, _):
        yield url


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
                "--disable-dev-shm-usage", f"--window-size={WIDTH},{HEIGHT}",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


# ---------------------------------------------------------------------------------------------
# waiting and looking up, again while the app redraws
# ---------------------------------------------------------------------------------------------

def _css(root, selector: str):
    from selenium.webdriver.common.by import By

    return root.find_elements(By.CSS_SELECTOR, selector)


def retrying(action, what, timeout: float = 30):
    """The first result of ``action()`` that is not None. It is called again while it returns
    None or the app redraws an element it touches (stale, covered, not yet interactable);
    after ``timeout`` seconds the test fails with ``what`` (a string, or a callable for one)."""
    from selenium.common.exceptions import (ElementClickInterceptedException,
                                            ElementNotInteractableException,
                                            StaleElementReferenceException)

    deadline = time.time() + timeout
    why = "condition not met"
    while True:
        try:
            result = action()
            if result is not None:
                return result
        except (StaleElementReferenceException, ElementClickInterceptedException,
                ElementNotInteractableException) as err:
            why = type(err).__name__
        if time.time() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s: {what() if callable(what) else what} ({why})")
        time.sleep(0.2)  # poll interval


BUSY = '[data-stale="true"], [data-testid="stSpinner"], [data-testid="stStatusWidgetRunningIcon"]'


def _idle(driver) -> bool:
    """The script run is over and nothing on screen waits to be redrawn."""
    done = _css(driver, '[data-testid="stApp"][data-test-script-state="notRunning"]')
    return bool(done) and not _css(driver, BUSY)


def _no_exception(driver, page: str) -> None:
    boxes = _css(driver, '[data-testid="stException"]')
    if boxes:
        shoot(driver, f"FAILED_{page.replace(' ', '_')}")
        pytest.fail(f"{page}: the app shows an exception: {boxes[0].get_attribute('innerText')[:2000]}")


def wait_for(driver, page: str, texts=(), charts: int = 0, timeout: float = 90,
             absent=()) -> None:
    """Wait until every text is on the page and no ``absent`` text is, at least ``charts``
    plotly charts have drawn, the app is idle, and all of it still holds, unchanged, on the
    next look; fail early on an exception box."""
    status: dict = {}
    last = None

    def ready():
        nonlocal last
        _no_exception(driver, page)
        body = driver.find_element("tag name", "body").text
        status["missing"] = [t for t in texts if t not in body] + [f"not {t}" for t in absent if t in body]
        status["charts"] = sum(1 for c in _css(driver, '[data-testid="stPlotlyChart"]')
                               if _css(c, ".main-svg"))
        status["idle"] = _idle(driver)
        if status["missing"] or status["charts"] < charts or not status["idle"]:
            last = None
            return None
        if body != last:  # settled only when a second look finds the same page
            last = body
            return None
        return True

    retrying(ready, lambda: f"{page}: missing texts {status.get('missing')}, "
                            f"{status.get('charts')}/{charts} charts, idle={status.get('idle')}", timeout)
    _no_exception(driver, page)


def _widget(driver, testid: str, label: str):
    """The widget ``[data-testid=testid]`` labelled ``label`` (or ``label (...)``), or None."""
    for box in _css(driver, f'[data-testid="{testid}"]'):
        names = _css(box, '[data-testid="stWidgetLabel"]')
        text = names[0].text.strip() if names else ""
        if text == label or text.startswith(f"{label} ("):
            return box
    return None


def value_of(driver, testid: str, label: str) -> str:
    """What the input of a selectbox / text input shows."""
    def look():
        box = _widget(driver, testid, label)
        return None if box is None else _css(box, "input")[0].get_attribute("value")
    return retrying(look, f"{testid} {label!r}")


def choose(driver, label: str, option: str) -> None:
    """Pick the first option containing ``option`` in the selectbox labelled ``label``; done
    once the closed box shows it."""
    from selenium.webdriver.common.keys import Keys

    wait_for(driver, f"before choosing in {label!r}")

    def shows() -> bool:
        box = _widget(driver, "stSelectbox", label)
        field = _css(box, "input")[0] if box is not None else None
        return field is not None and field.get_attribute("aria-expanded") != "true" \
            and option in field.get_attribute("value")

    def attempt():
        box = _widget(driver, "stSelectbox", label)
        if box is None:
            return None
        field = _css(box, "input")[0]
        field.click()
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(option)  # the list is virtualised: filter it so the option is drawn
        offered = [o for o in _css(driver, '[role="option"]') if option in o.text]
        if not offered:
            return None
        offered[0].click()
        return True if shows() else None  # at once: benchmarks/bench_app.py starts its clock here

    retrying(attempt, f"option {option!r} in {label!r}")


def type_into(driver, label: str, text: str) -> None:
    """Replace the text of the input labelled ``label`` and press Enter; done once it holds
    ``text`` and no longer asks for Enter (the app has the value)."""
    from selenium.webdriver.common.keys import Keys

    wait_for(driver, f"before typing into {label!r}")

    def attempt():
        box = _widget(driver, "stTextInput", label)
        if box is None:
            return None
        field = _css(box, "input")[0]
        if field.get_attribute("value") == text and "Press Enter" not in box.text:
            return True
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(Keys.DELETE)
        field.send_keys(text, Keys.ENTER)
        return None

    retrying(attempt, f"{text!r} in {label!r}")


def tick(driver, label: str, on: bool = True) -> None:
    """Set the checkbox labelled ``label``; done once it shows the state."""
    wait_for(driver, f"before ticking {label!r}")

    def attempt():
        boxes = [c for c in _css(driver, '[data-testid="stCheckbox"]') if c.text.strip() == label]
        if not boxes:
            return None
        if _css(boxes[0], "input")[0].is_selected() == on:
            return True
        _css(boxes[0], "label")[0].click()
        return None

    retrying(attempt, f"checkbox {label!r} {'on' if on else 'off'}")


def click_button(driver, text: str) -> None:
    """Click the button reading ``text`` once the app is idle and the button stands still
    (the same element on two looks in a row: not one being redrawn)."""
    wait_for(driver, f"before clicking {text!r}")
    seen = None

    def attempt():
        nonlocal seen
        buttons = [b for b in _css(driver, "button")
                   if b.text.strip() == text and b.is_displayed() and b.is_enabled()]
        if not buttons or buttons[0] != seen:
            seen = buttons[0] if buttons else None
            return None
        buttons[0].click()
        return True

    retrying(attempt, f"button {text!r}")


def remove_chip(driver, label: str, chip: str) -> None:
    """Remove ``chip`` from the multiselect labelled ``label``; done once it is gone."""
    wait_for(driver, f"before removing {chip!r}")

    def attempt():
        box = _widget(driver, "stMultiSelect", label)
        if box is None:
            return None
        buttons = _css(box, f'button[aria-label^="Remove {chip}"]')
        if not buttons:
            return True
        buttons[0].click()
        return None

    retrying(attempt, f"{chip!r} removed from {label!r}")


def go(driver, page: str) -> None:
    """Click the sidebar link of ``page`` (same session: choices carry over); done once the
    browser is at its address."""
    def attempt():
        # the text starts with the material icon's ligature name (e.g. "show_chart")
        links = [a for a in _css(driver, '[data-testid="stSidebarNavLink"]') if a.text.strip().endswith(page)]
        if not links:
            return None
        href = links[0].get_attribute("href").rstrip("/")
        links[0].click()
        return href

    href = retrying(attempt, f"navigation link {page!r}")
    retrying(lambda: True if driver.current_url.rstrip("/") == href else None, f"{page} opened")


def selected_runs(driver) -> list[str]:
    """Labels of the runs chosen in the 'Runs' picker."""
    def look():
        box = _widget(driver, "stMultiSelect", "Runs")
        return None if box is None else [b.get_attribute("aria-label")[len("Remove "):]
                                         for b in _css(box, 'button[aria-label^="Remove "]')]
    return retrying(look, "the 'Runs' picker")


def upload(driver, path: Path) -> None:
    def attempt():
        inputs = _css(driver, '[data-testid="stFileUploaderDropzoneInput"]')
        if not inputs:
            return None
        inputs[0].send_keys(str(path))
        return True
    retrying(attempt, f"uploading {path.name}")


def shown_image(driver) -> str:
    """The image the Compare page shows (its header starts "<name> · defect type ...")."""
    def look():
        headers = [m.text for m in _css(driver, '[data-testid="stMarkdownContainer"]')
                   if " · defect type " in m.text]
        return headers[0].split(" · ")[0] if headers else None
    return retrying(look, "the Compare page's image header")


# ---------------------------------------------------------------------------------------------
# layout: settled after a resize, labels whole, screenshots
# ---------------------------------------------------------------------------------------------

def _settled(driver) -> None:
    """Wait until the layout stops moving: two painted frames, and the same size on two looks."""
    script = ("const done = arguments[arguments.length - 1];"
              "requestAnimationFrame(() => requestAnimationFrame(() =>"
              "  done([innerWidth, document.body.scrollHeight])));")
    last = None

    def same():
        nonlocal last
        now = driver.execute_async_script(script)
        if now == last:
            return True
        last = now
        return None

    retrying(same, "the layout settling", 20)


# Texts of the main area drawn past the edge of an ancestor that clips them (ellipsis or hidden
# overflow): "Only mista…", a defect type chip hidden behind its neighbours. Code blocks scroll;
# icons and 1-px screen-reader labels are not texts on screen.
CUT_TEXTS = """
const out = [];
const main = document.querySelector('[data-testid="stMain"]') || document.body;
const walker = document.createTreeWalker(main, NodeFilter.SHOW_TEXT);
for (let node = walker.nextNode(); node; node = walker.nextNode()) {
  const text = node.textContent.trim(), el = node.parentElement;
  const skip = 'pre, code, svg, [data-testid="stDataFrame"], [data-testid="stIconMaterial"]';
  if (!text || !el || el.closest(skip)) continue;
  const range = document.createRange();
  range.selectNodeContents(node);
  const r = range.getBoundingClientRect();
  if (r.width === 0) continue;
  for (let a = el; a && a !== main; a = a.parentElement) {
    const cs = getComputedStyle(a);
    if (cs.overflowX === 'visible' && cs.textOverflow !== 'ellipsis') continue;
    const b = a.getBoundingClientRect();
    if (b.width <= 2 || b.height <= 2) break;  // hidden on purpose: a label for screen readers
    if (r.right > b.right + 1 || r.left < b.left - 1) { out.push(text.slice(0, 60)); break; }
  }
}
return out;
"""


def assert_labels_whole(driver, page: str) -> None:
    """No text of the page is cut at a 1280 px or a 1600 px wide window."""
    for width in (NARROW, WIDTH):
        driver.set_window_size(width, HEIGHT)
        _settled(driver)
        cut = driver.execute_script(CUT_TEXTS)
        if cut:
            shoot(driver, f"FAILED_{page.replace(' ', '_')}_{width}px", width=width)
            pytest.fail(f"{page}: texts cut at {width} px: {cut}")


STEPS: dict[str, float] = {}  # seconds from the start of the walk to each screenshot


def shoot(driver, name: str, width: int = WIDTH) -> Path:
    STEPS[name] = round(time.perf_counter() - STEPS.setdefault("_start", time.perf_counter()), 1)
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    # tall window so the whole page is in the picture
    height = driver.execute_script(
        "const m = document.querySelector('[data-testid=\"stMain\"]') || document.body;"
        "return Math.max(m.scrollHeight, document.body.scrollHeight);")
    driver.set_window_size(width, min(max(int(height) + 150, 1000), 4500))
    _settled(driver)
    driver.save_screenshot(str(path))
    driver.set_window_size(WIDTH, HEIGHT)
    _settled(driver)
    return path


# ---------------------------------------------------------------------------------------------
# the walk through every page
# ---------------------------------------------------------------------------------------------

def test_every_page_in_chromium(server, browser, runs_root, tmp_path):
    for stale in SHOTS.glob("FAILED_*.png"):  # from an earlier failed walk
        stale.unlink()
    runs = sorted((p for p in runs_root.iterdir() if (p / "metrics.json").is_file()), key=lambda p: p.name)
    names = [p.name for p in runs]
    spaces = {p.name: load_methods()[load_run(p).method].feature_spaces for p in runs}
    most = max(names, key=lambda n: len(spaces[n]))  # DifferNet: the backbone's and the flow's
    timings = {}
    start = STEPS["_start"] = time.perf_counter()
    # the pickers preselect the first MAX_DEFAULT_RUNS runs (by name); the rest stay a click away
    shown = names[:MAX_DEFAULT_RUNS]
    browser.get(f"{server}/")
    wait_for(browser, "compare", ["Compare runs on one test image", *shown, "broken run folder",
                                  "pixel threshold"], charts=2 * len(shown), timeout=120)  # map + overlay
    timings["compare_first_render_s"] = round(time.perf_counter() - start, 2)
    assert_labels_whole(browser, "compare")
    shoot(browser, "compare")

    # switch to a defect image by hand, as a learner would
    choose(browser, "Test image", "crack/")
    wait_for(browser, "compare (crack)", ["defect type crack"], charts=2 * len(shown))
    shoot(browser, "compare_crack")

    # an image no run gets wrong, then "Only mistakes" hides it: the picker must follow the page
    table = image_table([load_run(p) for p in runs if p.name in shown])
    right = table[~table.filter(like="verdict · ").isin(["FP", "FN"]).any(axis=1)]["image"]
    assert len(right), "every test image is a mistake of some run: nothing for the filter to hide"
    choose(browser, "Test image", right.iloc[0])
    wait_for(browser, "compare (a right one)", [f"{right.iloc[0]} · defect type"])
    tick(browser, "Only mistakes")
    wait_for(browser, "compare (mistakes)", absent=[f"{right.iloc[0]} · defect type"])
    assert value_of(browser, "stSelectbox", "Test image").split("  ")[0] == shown_image(browser)
    tick(browser, "Only mistakes", on=False)

    # drop a run: the choice must follow the learner to the next pages
    dropped = shown[0]
    remove_chip(browser, "Runs", dropped)
    kept = [n for n in shown if n != dropped]
    wait_for(browser, "compare (fewer runs)", kept, charts=2 * len(kept), absent=[dropped])
    assert [r.split()[0] for r in selected_runs(browser)] == kept

    go(browser, "Curves")
    wait_for(browser, "curves", ["Curves and metrics", "Metrics", "Image ROC", "Per-region overlap",
                                 "Image scores: normal vs defective"], charts=4 + len(kept))
    assert [r.split()[0] for r in selected_runs(browser)] == kept, "choice lost"
    assert_labels_whole(browser, "curves")
    shoot(browser, "curves")

    start = time.perf_counter()
    go(browser, "Feature space")
    choose(browser, "Run", most)
    # first UMAP in a fresh install compiles numba code: allow for it
    wait_for(browser, "features", ["Feature spaces", "t-SNE", "UMAP", "perplexity", "seed 0",
                                   "one round blob"], charts=2 * len(spaces[most]), timeout=150)
    timings["features_first_render_s"] = round(time.perf_counter() - start, 2)
    assert_labels_whole(browser, "features")
    shoot(browser, "features")

    go(browser, "Ablations")
    declared = [a for cls in load_methods().values() for a in cls.paper.ablations]
    if declared:  # e.g. DifferNet's Table 3: charts, and the commands for the missing runs
        wait_for(browser, "ablations", ["Ablations: the papers' tables", declared[0].title,
                                        "Missing runs", f"{python_command()} -m kit"],
                 charts=len(declared))
    else:
        wait_for(browser, "ablations", ["Ablations", "No registered method declares an ablation"])
    assert_labels_whole(browser, "ablations")
    shoot(browser, "ablations")

    go(browser, "Try it")
    wait_for(browser, "try it", ["Try it", "Score your own image", "Train a quick run",
                                 "Skipped a broken run folder"])
    # the defect the real run is surest about: the overlay then shows what a hit looks like
    rows = load_run(runs_root / "padim_lite0_128").scores
    upload(browser, Path(max((r for r in rows if r["label"]), key=lambda r: r["score"])["path"]))
    wait_for(browser, "try it (upload)", [f"scored by {len(runs)} run(s)", *names, "threshold"],
             charts=2 * len(runs), timeout=120, absent=["cannot score"])  # DifferNet's maps too
    assert_labels_whole(browser, "try it")
    shoot(browser, "try_it_scored")

    junk = tmp_path / "notes.png"
    junk.write_bytes(b"this is not an image at all")
    upload(browser, junk)
    wait_for(browser, "try it (bad upload)", ["not an image PIL can read"])
    shoot(browser, "try_it_bad_upload")

    choose(browser, "Data root", "data (")  # the toy dataset: training takes seconds
    retrying(lambda: True if value_of(browser, "stSelectbox", "Category") == "toy" else None,
             "the toy dataset's category offered")
    type_into(browser, "Settings (optional)", "weights=none image_size=64")
    type_into(browser, "Run name", "browser_quick_run")
    click_button(browser, "Train")
    wait_for(browser, "try it (train)", ["Run written to"], timeout=150)
    shoot(browser, "try_it_trained")
    made = load_run(runs_root / "browser_quick_run")
    assert made.config["method_config"]["image_size"] == 64  # the typed settings were used

    # first start: point the sidebar at an empty runs root
    empty = tmp_path / "empty_runs"
    empty.mkdir()
    type_into(browser, "Runs root", str(empty))
    wait_for(browser, "first start", ["No runs yet", "make demo", f"{python_command()} -m kit demo",
                                      "Make quick demo runs on the embedded sample"])
    shoot(browser, "first_start")

    (REPO_ROOT / "artifacts" / "browser_timings.json").write_text(json.dumps(timings, indent=2))
    print("browser timings:", timings, "steps:", STEPS)

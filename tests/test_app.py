"""The dashboard through Streamlit's AppTest: every page, the failure cases, first start.

Runs are made once for the file on a generated toy dataset (untrained backbone, 64 px): two
PaDiM runs and a tiny run of every other registered method, so that every page is run with
every method's runs and the next method cannot break a page unnoticed. The whole file stays
within a couple of minutes on 2 cores.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

import kit.method
from fixtures_runs import TINY, TOY, broken_run, moved_run, toy_runs
from kit.app import common, try_it
from kit.method import load_methods
from kit.methods.padim import Padim
from kit.papers import Ablation, AblationVariant, Paper
from kit.paths import REPO_ROOT
from kit.pipeline import restore_method
from kit.runstore import display_maps, load_run

APP = str(REPO_ROOT / "app.py")
METHODS = sorted(load_methods())
VENV_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict[str, Path]:
    made = toy_runs(tmp_path_factory.mktemp("app"))
    broken_run(made["runs"])
    moved_run(made["a"], made["runs"])
    return made


@pytest.fixture(autouse=True)
def env(monkeypatch, toy, tmp_path):
    monkeypatch.setenv("KIT_RUNS_ROOT", str(toy["runs"]))
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("KIT_DATA_ROOT", str(toy["data"]))


def start(page: str | None = None, timeout: float = 90) -> AppTest:
    """The app after its first run, on ``page`` (a file under kit/app/) when given."""
    at = AppTest.from_file(APP, default_timeout=timeout).run()
    if page:
        at.switch_page(f"kit/app/{page}.py").run()
    assert_clean(at)
    return at


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def walk(node):
    yield node
    for child in getattr(node, "children", {}).values():
        yield from walk(child)


def charts(at: AppTest) -> set[str]:
    """Keys of the plotly charts on the page (AppTest has no accessor for them)."""
    return {n.key for n in walk(at.main) if getattr(n, "type", None) == "plotly_chart"}


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption", "info", "warning", "error", "success",
                                  "title", "subheader") for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def name(option: str) -> str:
    """Image name of a 'Test image' option label (labels append the runs' mistakes)."""
    return option.split("  ")[0]


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` (a decompression-bomb shape), no pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) \
        + chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------------------
# Compare
# ---------------------------------------------------------------------------------------------

def test_every_registered_method_has_tiny_settings():
    missing = sorted(set(METHODS) - set(TINY))
    assert not missing, f"add tiny settings for {missing} to TINY in tests/fixtures_runs.py"


def test_compare_shows_image_truth_maps_and_overlays(toy):
    at = start()
    assert at.title[0].value == "Compare runs on one test image"
    assert any("broken run" in w.value for w in at.sidebar.warning), "broken folder not reported"
    same_data = sorted({toy["a"], toy["b"], *toy["methods"].values()}, key=lambda p: p.name)
    assert at.multiselect(key="pick_runs").value == [str(p) for p in same_data][:common.MAX_DEFAULT_RUNS]

    at.multiselect(key="pick_runs").set_value([str(p) for p in toy["methods"].values()]).run()
    assert_clean(at)
    shown = charts(at)
    for run in toy["methods"].values():  # every method's map and overlay
        assert {f"cmp_map_{run.name}", f"cmp_overlay_{run.name}"} <= shown, run.name
    # the test image, its ground truth, and the reconstruction of each run that keeps one
    # (ndp_net's: the toy test set is smaller than the sample a run keeps, so all are kept)
    rebuilt = [p for p in toy["methods"].values() if load_run(p).reconstructions]
    assert any(load_run(p).method == "ndp_net" for p in rebuilt)
    assert len(at.image) == 2 + len(rebuilt)
    assert "**reconstruction**" in texts(at)
    assert "cmp_rebuilt" not in {c.key for c in at.checkbox}  # every image has one: no filter
    assert "pixel threshold" in texts(at) and "median normal pixel" in texts(at)

    # every method's run has its metrics per defect type, with the pooled value beside them
    per_type = next(df.value for df in at.dataframe if "all types" in df.value.columns)
    assert sorted(per_type["run"]) == sorted(p.name for p in toy["methods"].values())
    assert "all types" in per_type.columns and len(per_type.columns) > 2
    images = at.selectbox(key="cmp_image")
    good = next(name(o) for o in images.options if o.startswith("good/"))
    images.set_value(good).run()
    assert_clean(at)
    assert "defect type **good**" in texts(at)


def shown_image(at: AppTest) -> str:
    """The image the Compare page shows: the name in its header "**<name>** · defect type ..."."""
    header = next(m.value for m in at.markdown if m.value.startswith("**") and " · defect type " in m.value)
    return header.split("**")[1]


def picker_label(at: AppTest, before: str) -> str:
    """The label a browser's "Test image" picker shows after a run. Streamlit sends a value
    only where the server changed it (``set_value``); else the browser keeps ``before``, the
    label it showed (the user's last pick)."""
    proto = at.selectbox(key="cmp_image").proto
    return proto.raw_value if proto.set_value else before


def test_compare_picker_names_the_image_on_screen(toy):
    """Filters, sorting and a new choice of runs change the picker's options and labels; the
    picker must go on naming the image on screen (it used to keep naming the old one)."""
    at = start()
    runs = [toy["a"], toy["b"], *(r for m, r in toy["methods"].items() if r != toy["a"])]
    at.multiselect(key="pick_runs").set_value([str(r) for r in runs]).run()
    options = at.selectbox(key="cmp_image").options
    right = next(o for o in options if "⚠️" not in o)  # no run errs on it: "Only mistakes" hides it
    seen = right
    at.selectbox(key="cmp_image").set_value(name(right)).run()

    def check(step: str) -> None:
        nonlocal seen
        assert_clean(at)
        seen = picker_label(at, seen)
        assert name(seen) == shown_image(at) == at.selectbox(key="cmp_image").value, step

    check("picked")
    at.checkbox(key="cmp_mistakes").check().run()
    check("only mistakes")
    assert shown_image(at) != name(right)
    at.selectbox(key="cmp_sort").set_value("score: highest first").run()
    check("sorted by score")
    at.selectbox(key="cmp_sort_run").set_value(runs[-1].name).run()
    check("sorted by another run's score")
    at.checkbox(key="cmp_mistakes").uncheck().run()
    check("all images again")

    # an image whose label names a run's mistake: dropping that run relabels it
    options = at.selectbox(key="cmp_image").options
    wrong = next((o for o in options if any(f" {r.name}" in o for r in runs[1:])), None)
    assert wrong, f"the toy runs {[r.name for r in runs[1:]]} make no mistake: no label to change"
    dropped = next(r for r in runs[1:] if f" {r.name}" in wrong)
    seen = wrong
    at.selectbox(key="cmp_image").set_value(name(wrong)).run()
    check("picked a mistake")
    at.multiselect(key="pick_runs").set_value([str(r) for r in runs if r != dropped]).run()
    check("relabelled")
    assert shown_image(at) == name(wrong), "the choice was lost with the new labels"


def test_compare_filters_sorts_and_flags(toy):
    at = start()
    at.multiselect(key="pick_runs").set_value([str(toy["a"]), str(toy["b"])]).run()
    at.multiselect(key="cmp_types").set_value(["crack"]).run()
    assert all(o.startswith("crack/") for o in at.selectbox(key="cmp_image").options)

    at.selectbox(key="cmp_sort").set_value("score: highest first").run()
    at.selectbox(key="cmp_sort_run").set_value("padim_toy_b").run()
    order = [name(o) for o in at.selectbox(key="cmp_image").options]
    scores = {r["name"]: r["score"] for r in common.get_run(str(toy["b"]), 0).scores}
    assert [scores[o] for o in order] == sorted((scores[o] for o in order), reverse=True)

    at.multiselect(key="cmp_types").set_value(["good", "crack"]).run()
    at.checkbox(key="cmp_mistakes").check().run()
    assert_clean(at)
    options = at.selectbox(key="cmp_image").options if at.selectbox else []
    for label in options:  # every remaining image is a mistake of some run, and says so
        assert "FP" in label or "FN" in label
    if not options:
        assert "No test image matches" in texts(at)


def test_choices_follow_the_learner_across_pages(toy):
    at = start()
    at.multiselect(key="pick_runs").set_value([str(toy["b"])]).run()
    at.switch_page("kit/app/curves.py").run()
    assert_clean(at)
    assert at.multiselect(key="pick_runs").value == [str(toy["b"])]
    assert list(at.dataframe[0].value["run"]) == ["padim_toy_b"]


def test_compare_lists_the_images_whose_reconstruction_a_run_kept(toy, tmp_path, monkeypatch):
    """A real run keeps 64 of MTD's 583 reconstructions: the page offers those alone."""
    source = toy["methods"]["ndp_net"]
    run = tmp_path / "runs" / source.name
    shutil.copytree(source, run)
    with np.load(run / "maps.npz") as z:
        arrays = {k: z[k] for k in z.files}
    keep = arrays["reconstruction_index"][::2]
    arrays["reconstruction_index"], arrays["reconstructions"] = keep, arrays["reconstructions"][::2]
    np.savez_compressed(run / "maps.npz", **arrays)
    monkeypatch.setenv("KIT_RUNS_ROOT", str(tmp_path / "runs"))
    at = start()
    at.multiselect(key="pick_runs").set_value([str(run)]).run()
    all_images = [name(o) for o in at.selectbox(key="cmp_image").options]
    assert len(all_images) > len(keep)
    at.checkbox(key="cmp_rebuilt").check().run()
    assert_clean(at)
    kept = [name(o) for o in at.selectbox(key="cmp_image").options]
    index = {r["name"]: int(r["index"]) for r in load_run(run).scores}
    assert sorted(index[n] for n in kept) == sorted(int(i) for i in keep)
    assert "**reconstruction**" in texts(at)  # the image on screen is one of them


def test_compare_survives_moved_data(toy):
    at = start()
    at.selectbox(key="pick_root").set_value("/nonexistent/moved/data").run()
    assert_clean(at)
    body = texts(at)
    assert "data moved" in body.lower()
    assert "cmp_map_moved_data_run" in charts(at)  # maps still shown without the photo


# ---------------------------------------------------------------------------------------------
# Curves
# ---------------------------------------------------------------------------------------------

def test_curves_page(toy):
    at = start("curves")
    assert at.title[0].value == "Curves and metrics"
    runs = [toy["b"], *toy["methods"].values()]
    at.multiselect(key="pick_runs").set_value([str(r) for r in runs]).run()
    assert_clean(at)
    table = at.dataframe[0].value
    ours = table[table["source"] == "ours"]
    assert sorted(ours["run"]) == sorted(r.name for r in runs)
    assert ours["image AUROC"].notna().all()
    cached = ours.set_index("method")["test views from cache"]  # warm times are marked
    assert cached.loc[["differnet"]].notna().all() and cached.loc[["padim"]].isna().all()
    declared = {n for n in toy["methods"] if load_methods()[n].paper.results}
    assert set(table.loc[table["source"] != "ours", "method"]) == declared  # the papers' rows
    assert {"curve_image_roc", "curve_image_pr", "curve_pixel_roc", "curve_pro",
            *(f"hist_{r.name}" for r in runs)} <= charts(at)


# ---------------------------------------------------------------------------------------------
# Feature space
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_feature_space_page(toy, tmp_path, method):
    at = start("features", timeout=180)  # the first UMAP of a fresh install compiles numba code
    assert at.title[0].value == "Feature spaces"
    at.selectbox(key="pick_run").set_value(str(toy["methods"][method])).run()
    assert_clean(at)
    spaces = load_methods()[method].feature_spaces  # e.g. a flow's latent space beside the source
    assert {f"fs_{a}_{s}" for a in ("tsne", "umap") for s in spaces} <= charts(at)
    body = texts(at)
    assert "perplexity" in body and "n_neighbors" in body and "seed 0" in body
    assert "one round blob" in body  # the flow-latent caveat
    assert list((tmp_path / "cache" / "embeddings").glob("*.npz")), "projections not cached on disk"

    at.slider(key="fs_perplexity").set_value(5).run()
    at.number_input(key="fs_seed").set_value(3).run()
    at.radio(key="fs_color").set_value("defect_type").run()
    assert_clean(at)
    assert "perplexity 5" in texts(at) and "seed 3" in texts(at)


# ---------------------------------------------------------------------------------------------
# Ablations
# ---------------------------------------------------------------------------------------------

class FakeAblated(Padim):
    """PaDiM under another name, declaring a small ablation (a stand-in for a paper's table)."""

    name = "fakeabl"
    paper = Paper(method="fakeabl", title="Fake method", ablations=(
        Ablation(name="toyabl", title="Table 9: channels", metric="image_auroc",
                 paper_dataset="nowhere", variants=[
                     AblationVariant("A", {"n_features": 40}, 0.9),
                     AblationVariant("B", {"n_features": 20}, 0.95),
                     AblationVariant("C", {"blur_sigma": 2.0}, None)],
                 extra_metrics=("pixel_auroc_per_image",)),))


def test_ablations_page_with_a_registered_fake_method(toy, tmp_path, monkeypatch):
    monkeypatch.setitem(kit.method.METHODS, "fakeabl", FakeAblated)
    runs = tmp_path / "abl_runs"
    for label, source in (("A", toy["a"]), ("B", toy["b"])):  # toy runs, relabelled and tagged
        shutil.copytree(source, runs / f"fake_{label}")
        config = json.loads((runs / f"fake_{label}" / "config.json").read_text())
        config.update(method="fakeabl", tags={"ablation": "toyabl", "variant": label})
        (runs / f"fake_{label}" / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("KIT_RUNS_ROOT", str(runs))
    at = start("ablations")
    assert "abl_fig_fakeabl_toyabl" in charts(at)
    table = next(d.value for d in at.dataframe if "variant" in d.value and list(d.value["variant"]) == ["A", "B", "C"])
    assert list(table["runs"]) == ["fake_A", "fake_B", "missing"]
    assert table["ours (mean)"].notna().tolist() == [True, True, False]
    assert table["ours, pixel AUROC per image"].notna().tolist() == [True, True, False]  # extra metric
    code = "\n".join(c.value for c in at.code)
    fake = [line for line in code.splitlines() if "--method fakeabl" in line]  # other methods list theirs too
    assert any("--tag variant=C" in line and "--set blur_sigma=2.0" in line for line in fake)
    assert not any("--tag variant=A" in line for line in fake)  # A has a run: not listed as missing


@pytest.mark.parametrize("executable,python", [
    pytest.param(VENV_PYTHON, ".venv/bin/python", id="project-venv"),
    pytest.param(Path("/usr/bin/python3"), "python", id="other-python"),
])
def test_printed_commands_name_the_python_to_use(executable, python, tmp_path, monkeypatch):
    """Commands the app prints work as written: the project's venv when the app runs from it
    (a bare `python` there is usually the system one, without the kit)."""
    monkeypatch.setattr(sys, "executable", str(executable))
    at = start("ablations")
    commands = [line for c in at.code for line in c.value.splitlines()
                if line.strip() and not line.startswith("#")]
    assert commands, "no command printed (no registered method declares an ablation?)"
    assert all(line.startswith(f"{python} -m kit ") or line.startswith(f"{python} -c ")
               for line in commands), commands
    monkeypatch.setenv("KIT_RUNS_ROOT", str(tmp_path / "no_runs"))
    at = start("try_it")  # the first-start help, shown by every page
    assert f"{python} -m kit demo" in texts(at) and f"`{python} -m kit fit " in texts(at)


def test_ablations_page_never_mixes_datasets(toy, tmp_path, monkeypatch):
    """Runs of one variant on two datasets (as the embedded sample and the full MTD, with the
    same category name): the page shows one dataset at a time and averages within it only."""
    monkeypatch.setitem(kit.method.METHODS, "fakeabl", FakeAblated)
    runs = tmp_path / "abl_runs"
    for name, root, fingerprint in (("fake_A_sample", None, None),
                                    ("fake_A_full", "/data/full_mtd", "f" * 16)):
        shutil.copytree(toy["a"], runs / name)
        config = json.loads((runs / name / "config.json").read_text())
        config.update(method="fakeabl", tags={"ablation": "toyabl", "variant": "A"})
        if root:
            config["data_root"] = root
            config["dataset"] = {**config["dataset"], "root": root, "fingerprint": fingerprint}
        (runs / name / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("KIT_RUNS_ROOT", str(runs))
    at = start("ablations")
    picker = at.selectbox(key="abl_group_fakeabl_toyabl")
    assert len(picker.options) == 2 and any("full_mtd" in o for o in picker.options)
    from kit.app.ablations import group_of
    from kit.runstore import load_run

    shown = []
    for name in ("fake_A_sample", "fake_A_full"):
        picker.set_value(group_of(load_run(runs / name))).run()
        assert_clean(at)
        table = next(d.value for d in at.dataframe
                     if "variant" in d.value and list(d.value["variant"]) == ["A", "B", "C"])
        shown.append(table.loc[table["variant"] == "A", "runs"].item())
    assert sorted(shown) == ["fake_A_full", "fake_A_sample"]  # one run each, never both


def test_ablations_page_without_ablations(monkeypatch):
    monkeypatch.setattr(kit.method, "METHODS", {"padim": Padim})
    at = start("ablations")
    assert "No registered method declares an ablation" in texts(at)


# ---------------------------------------------------------------------------------------------
# Try it
# ---------------------------------------------------------------------------------------------

def test_try_it_scores_an_upload_with_every_run(toy):
    at = start("try_it")
    assert any("broken run" in w.value for w in at.warning)
    at.selectbox(key="try_category").set_value("toy").run()
    path = sorted((toy["data"] / "toy" / "test" / "crack").glob("*.png"))[0]
    at.file_uploader(key="try_upload").set_value(("crack.png", png_bytes(np.asarray(Image.open(path))),
                                                  "image/png")).run()
    assert_clean(at)
    assert not [w.value for w in at.warning if "cannot score" in w.value]
    runs = {toy["a"], toy["b"], *toy["methods"].values(), toy["runs"] / "moved_data_run"}
    assert {f"try_{kind}_{r.name}" for r in runs for kind in ("map", "overlay")} <= charts(at)
    assert f"scored by {len(runs)} run(s)" in texts(at)
    for run in toy["methods"].values():  # the score the run gave this very image when it was made
        stored = next(r["score"] for r in load_run(run).scores if r["name"] == f"crack/{path.name}")
        assert f"**{run.name}** · score {stored:.4g} " in texts(at), run.name


@pytest.mark.parametrize("method", METHODS)
def test_try_it_scores_as_the_pipeline(toy, method):
    """An uploaded test image gets the score and map its run stored for it (kit.pipeline)."""
    run = load_run(toy["methods"][method])
    row = next(r for r in run.scores if r["label"])
    score, amap, small = try_it.score_image(restore_method(run.path),
                                            try_it.read_upload(Path(row["path"]).read_bytes()))
    size = run.config["method_config"]["image_size"]
    assert small.shape == (size, size, 3)
    assert score == pytest.approx(row["score"], rel=1e-5)
    # the run keeps a display copy (at most DISPLAY_SIZE px, 8 bits: within 0.4 % of the
    # stored maps' value range); the upload's full map, shrunk the same way, must match it
    shown = display_maps(amap[None])[0]
    np.testing.assert_allclose(shown, run.maps[int(row["index"])], rtol=0,
                               atol=0.005 * float(np.ptp(run.maps)) + 1e-6)


@pytest.mark.parametrize("name,data,message", [
    pytest.param("notes.txt", b"hello, I am not an image", "not an image", id="not-an-image"),
    pytest.param("empty.png", b"", "empty", id="empty"),
    pytest.param("huge.png", b"\0" * (21 * 1024 * 1024), "file too large", id="over-20MB"),
    pytest.param("big.png", png_header_only(9_000, 9_000), "image too large", id="81-megapixels"),
    pytest.param("bomb.png", png_header_only(20_000, 20_000), "image too large", id="400-megapixels"),
    pytest.param("cut.png", png_bytes(np.full((64, 64), 7, np.uint8))[:60], "truncated", id="truncated"),
])
def test_try_it_refuses_bad_uploads(name, data, message):
    at = start("try_it")
    at.file_uploader(key="try_upload").set_value((name, data, "application/octet-stream")).run()
    assert_clean(at)
    assert any(message in e.value for e in at.error), [e.value for e in at.error]


def training_form(toy, runs: Path, monkeypatch, method: str, settings: str) -> AppTest:
    """The Try it page with its training form filled in (runs go to ``runs``)."""
    runs.mkdir()
    monkeypatch.setenv("KIT_RUNS_ROOT", str(runs))
    at = start("try_it")
    at.selectbox(key="train_method").set_value(method)
    at.selectbox(key="train_root").set_value(str(toy["data"])).run()
    at.selectbox(key="train_category").set_value("toy")
    at.text_input(key="train_settings").set_value(settings)
    return at


def test_try_it_trains_a_quick_run(toy, tmp_path, monkeypatch):
    runs = tmp_path / "train_runs"
    at = training_form(toy, runs, monkeypatch, "padim", "weights=none image_size=64")

    at.text_input(key="train_name").set_value("../escape").run()
    at.button(key="train_go").click().run(timeout=60)
    assert any("invalid run name" in e.value for e in at.error)
    assert not (tmp_path / "escape").exists()

    at.text_input(key="train_name").set_value("app_quick").run()
    at.button(key="train_go").click().run(timeout=180)
    assert_clean(at)
    assert any("Run written to" in s.value for s in at.success), texts(at)
    assert (runs / "app_quick" / "metrics.json").is_file()
    assert at.get("progress"), "no progress bar"

    at.button(key="train_go").click().run(timeout=60)  # same name again, no 'Replace'
    assert any("exists already" in e.value for e in at.error)


def test_try_it_draws_the_live_loss_curve_of_a_trained_method(toy, tmp_path, monkeypatch):
    runs = tmp_path / "curve_runs"
    at = training_form(toy, runs, monkeypatch, "differnet",
                       "weights=none image_size=64 scales=[64] epochs=3 hidden=32 "
                       "n_test_transforms=2 n_map_transforms=1 cache=false")
    at.text_input(key="train_name").set_value("curve_run").run()
    at.button(key="train_go").click().run(timeout=180)
    assert_clean(at)
    assert "curve_run: training loss, epoch 3 of 3" in texts(at)
    chart = [n for n in walk(at.main) if getattr(n, "type", None) == "vega_lite_chart"]
    assert chart, "no loss curve"  # st.line_chart is drawn as a Vega-Lite chart
    assert "nll_per_dim" in str(chart[0].proto)  # the loss DifferNet reports per epoch
    log = json.loads((runs / "curve_run" / "config.json").read_text())["train_log"]
    assert len(log["loss"]) == 3


# ---------------------------------------------------------------------------------------------
# First start
# ---------------------------------------------------------------------------------------------

def test_first_start_explains_and_makes_demo_runs(tmp_path, monkeypatch):
    runs = tmp_path / "fresh_runs"
    monkeypatch.setenv("KIT_RUNS_ROOT", str(runs))
    monkeypatch.setattr(common, "DEMO_OVERRIDES", dict(TOY))
    monkeypatch.setattr(common, "DEMO_METHODS", ["padim"])
    monkeypatch.setattr(sys, "executable", str(VENV_PYTHON))
    at = start()
    body = texts(at)
    assert "No runs yet" in body and "make demo" in body and ".venv/bin/python -m kit demo" in body
    for page in ("curves", "features"):  # the other run-based pages say the same
        at.switch_page(f"kit/app/{page}.py").run()
        assert_clean(at)
        assert "No runs yet" in texts(at)
    at.switch_page("kit/app/compare.py").run()
    at.button(key="make_demo").click().run(timeout=240)
    assert_clean(at)
    assert (runs / "demo_padim" / "metrics.json").is_file()
    assert at.title[0].value == "Compare runs on one test image"
    assert "cmp_map_demo_padim" in charts(at)


def test_ablation_commands_share_runs_between_maps_of_one_model(tmp_path, monkeypatch):
    """CLS-CNFs' Table 2 is five maps of one run, and Table 1's FE_PRE / FE_CLS read that run:
    the page prints one fit line for Table 2 (tagged with all five variants) and points Table 1's
    two at Table 2's command instead of a fit of their own."""
    monkeypatch.setenv("KIT_RUNS_ROOT", str(tmp_path / "no_runs"))
    at = start("ablations")
    code = "\n".join(c.value for c in at.code)
    fits = [line for line in code.splitlines() if line.startswith(".venv/bin/python -m kit fit --method cls_cnfs")
            or " -m kit fit --method cls_cnfs" in line]
    table2 = [line for line in fits if "ablation=table2" in line]
    assert len(table2) == 1 and "pre_flows=true" in table2[0]
    assert all(label in table2[0] for label in ("A_p", "A_nf_pre", "A_nf", "A_ns", '"A"'))
    table1 = [line for line in fits if "ablation=table1" in line]
    assert len(table1) == 1 and "head=reg" in table1[0]  # FE_REG only
    assert "kit ablation cls_cnfs table2" in code and "--variants A_nf_pre" in code

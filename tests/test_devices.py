"""The ``device`` setting: auto picks what torch sees, CUDA without a GPU is a clear error
raised before any data is read, and the device never makes a run look stale."""

from __future__ import annotations

import pytest
import torch

from fixtures_runs import tiny_overrides
from kit.devices import DeviceError, resolve_device
from kit.method import ConfigError, load_methods, make_method
from kit.pipeline import restore_method, run_experiment, run_is_current


def test_auto_and_cpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_says_why(name):
    with pytest.raises(DeviceError, match="device=auto or device=cpu") as err:
        resolve_device(name)
    assert ("CPU-only build" in str(err.value)) or ("sees no GPU" in str(err.value))


def test_unknown_device_is_refused_when_the_config_is_built():
    with pytest.raises(ConfigError, match="device='tpu'"):
        make_method("padim", device="tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("method", sorted(load_methods()))
def test_cuda_run_is_refused_before_reading_data(method, tmp_path):
    missing_data = tmp_path / "no_such_data"  # a data error would come later
    with pytest.raises(DeviceError):
        run_experiment(method, missing_data, "toy", tmp_path / "run", progress=False,
                       overrides={**tiny_overrides(method), "device": "cuda"})
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("method", sorted(load_methods()))
def test_device_is_runtime_only(method, toy_root, tmp_path):
    overrides = {**tiny_overrides(method), "device": "cpu"}
    run = run_experiment(method, toy_root, "toy", tmp_path / "run", progress=False,
                         overrides=overrides)
    # the same experiment asked for on another device is this run, not a stale one
    assert run_is_current(run, method, overrides={**overrides, "device": "auto"})
    restored = restore_method(run)  # opens on this machine's device, whatever it was fitted on
    assert restored.device == resolve_device("auto")

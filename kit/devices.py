"""Where the work runs: the ``device`` setting of every method.

``auto`` takes the GPU when torch sees one and the CPU otherwise, so the same command works on
a laptop and on a workstation. Asking for CUDA where torch sees none is an error that says why,
never a silent fall back to the CPU (a run that was meant to take minutes would take hours).
"""

from __future__ import annotations

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")


class DeviceError(ValueError):
    """A device that this machine's torch cannot use. The message says what torch sees."""


def _cuda_problem() -> str:
    built = torch.version.cuda
    if not built:
        return (f"this torch ({torch.__version__}) is a CPU-only build; install a CUDA build "
                "(make setup without TORCH=cpu) to use a GPU")
    return (f"torch {torch.__version__} is built for CUDA {built} but sees no GPU "
            "(torch.cuda.is_available() is False: no NVIDIA driver, or CUDA_VISIBLE_DEVICES "
            "hides it)")


def resolve_device(name: str) -> torch.device:
    """``"auto" | "cpu" | "cuda" | "cuda:N"`` -> a ``torch.device`` this machine can use."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device={name!r}: {_cuda_problem()}. Use device=auto or "
                              "device=cpu")
        index = int(name.split(":", 1)[1]) if ":" in name else 0
        count = torch.cuda.device_count()
        if index >= count:
            raise DeviceError(f"device={name!r}: torch sees {count} GPU(s), numbered 0 to "
                              f"{count - 1}")
        return torch.device("cuda", index)
    raise DeviceError(f"device={name!r}: use one of {', '.join(DEVICE_CHOICES)} or cuda:N")

"""Which torch device to run on: the name a user gives is checked before any work (and without torch), and its
availability once torch is imported, so that `--device bogus` or `--device cuda` on a machine without CUDA is a
one-line `DeviceError`, not a traceback after the index was created."""

from __future__ import annotations

from typing import TYPE_CHECKING

from retrieval.errors import DeviceError

if TYPE_CHECKING:
    import torch

DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def check_device_name(name: str | None) -> None:
    """Raise `DeviceError` unless `name` is None or a device torch could mean: `cpu`, `cuda`, `cuda:N`, ..."""
    if name is None:
        return
    kind, colon, number = name.partition(":")
    if kind not in DEVICE_TYPES or (colon and not number.isdigit()):
        raise DeviceError(f"unknown device {name!r} (use cpu, cuda or cuda:N)")


def available_device(name: str | None) -> torch.device:
    """The device `name` names, checked to exist here; without a name, CUDA when torch sees a GPU, else the CPU."""
    import torch

    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device_name(name)
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is a CPU-only build" if torch.version.cuda is None else "torch sees no GPU"
            raise DeviceError(f"device {name!r}: CUDA is not available ({why}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r}: there are only {torch.cuda.device_count()} CUDA devices")
    elif device.type != "cpu":
        backend = getattr(torch.backends, device.type, None) or getattr(torch, device.type, None)
        if backend is None or not backend.is_available():
            raise DeviceError(f"device {name!r} is not available here; use --device cpu")
    return device

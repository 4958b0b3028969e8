"""Which torch device a run, a task or a model uses."""

from __future__ import annotations

import torch

from podbench.errors import UserError

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> cuda when available else cpu; anything else must be a usable torch device.

    Raises:
        UserError: ``device`` is not a torch device, or names CUDA where none is available.
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise UserError(f"device '{device}' is not a torch device; use auto, cpu or cuda.") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{device}' was asked for but CUDA is not available; "
                        "use device: cpu (or auto).")
    return dev

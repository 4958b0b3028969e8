"""Compile before the clock starts: compile time is paid once per process, never as training time.

TorchDynamo keeps compiled code per process, guarded on the module's class and its tensors'
shapes, not on the module object: a new network of the same architecture (the next run in a
reused Ray worker) runs the code compiled for the previous one (``prepare_model`` raises the
recompile limit and sizes Inductor's pool from the run's CPUs). :func:`warm_up` compiles every
batch shape of a run before it is timed, without changing the model's weights, statistics or the
random state, so images/s never include compilation.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["warm_up"]


def warm_up(
    model: nn.Module,
    forward: Callable[[torch.Tensor], Any],
    shapes: Iterable[tuple[bool, tuple[int, ...]]],
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
    *,
    memory_format: torch.memory_format | None = None,
) -> None:
    """Run ``forward`` (and backward in training mode) once per ``(training, shape)``.

    Zero inputs, so no random number is drawn; the weights and buffers (BatchNorm statistics)
    are restored afterwards and gradients cleared, so the run trains as if nothing happened.
    """
    saved = copy.deepcopy(model.state_dict())
    was_training = model.training
    device = next(model.parameters()).device
    try:
        for training, shape in shapes:
            model.train(training)
            x = torch.zeros(shape, device=device)
            if memory_format is not None and x.dim() == 4:
                x = x.contiguous(memory_format=memory_format)
            if training:
                with autocast():
                    out = forward(x)
                out.float().sum().backward()
            else:
                with torch.no_grad(), autocast():
                    forward(x)
    finally:
        model.load_state_dict(saved)
        model.train(was_training)
        for p in model.parameters():
            p.grad = None

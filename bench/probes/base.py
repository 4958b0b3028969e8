"""What an evaluation probe is, what it sees of a run, and how the engine runs the probes.

A probe is a class with a pydantic ``Settings`` model (its fields are the keys of its entry under
``evaluate:`` in a suite) and one method, ``measure(context) -> {metric: float}``. The engine
calls it after the last epoch (and every ``every`` epochs when the entry says so) on the
training device, and the record keeps its values under ``evaluation.<probe>.<metric>``.

A probe measures on ``context.split``: the test split, or the validation split when the run
evaluates on validation (tuning), so the test set is never read there. Class probabilities are
softmax(scores / T) of the loss's scores; T is fitted by NLL on the validation split
(:attr:`ProbeContext.temperature`, Guo et al. 2017), which is why a run with probes always
carves a validation split out of its training set.

Example:
    >>> from pydantic import BaseModel
    >>> class Accuracy(Probe):
    ...     class Settings(BaseModel):
    ...         pass
    ...     def measure(self, context):
    ...         scores, labels = context.scores(context.split)
    ...         return {"acc": float((scores.argmax(1) == labels).float().mean())}
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor

from podbench.probes.calibration import fit_temperature

if TYPE_CHECKING:
    from podbench.runs import RunSettings
    from podbench.tasks import Task

__all__ = ["Probe", "ProbeContext", "full_precision"]


class Probe(abc.ABC):
    """Base class of evaluation probes: ``Settings`` and ``measure``."""

    class Settings(BaseModel):
        """The probe's settings (none by default)."""

        model_config = ConfigDict(extra="forbid")

    settings: Any

    def __init__(self, settings: BaseModel | None = None) -> None:
        self.settings = settings if settings is not None else self.Settings()

    @abc.abstractmethod
    def measure(self, context: ProbeContext) -> dict[str, float | None]:
        """The probe's named values for the run ``context`` describes."""

    def check_run(self, run: RunSettings, where: str = "evaluate") -> None:
        """Refuse, when the spec is loaded, run settings this probe cannot measure under
        (a :class:`~podbench.errors.UserError` starting with ``where``); default: any."""
        return None  # an optional hook: by default every run setting can be measured


class ProbeContext:
    """What a probe sees of a run: the trained network's scores, the data, the device.

    Args:
        forward: features of a normalised batch (the network, under the run's autocast).
        predict: class scores of features (the loss plugin's ``predict``).
        task: the run's evaluation task (splits ``test``, ``val``, and ``*-unknown`` for open set).
        split: where probes measure (``test``, or ``val`` when the run evaluates on validation).
        batch_size: the evaluation batch size.
        seed: the run's seed (random corruptions draw from it).
        load_other: loads another registered dataset as a task shaped like ``task``'s input
            (name, limit, data root or None) -> Task; for far-OOD sets.
    """

    fit_split: ClassVar[str] = "val"

    def __init__(
        self,
        *,
        forward: Callable[[Tensor], Tensor],
        predict: Callable[[Tensor], Tensor],
        task: Task,
        split: str,
        batch_size: int,
        seed: int,
        load_other: Callable[[str, int | None, str | None], Task] | None = None,
    ) -> None:
        self.forward = forward
        self.predict = predict
        self.task = task
        self.split = split
        self.batch_size = batch_size
        self.seed = seed
        self.device = task.device
        self._load_other = load_other
        self._scores: dict[str, tuple[Tensor, Tensor]] = {}
        self._temperature: float | None = None

    @torch.no_grad()
    def scores_of(self, images: Tensor) -> Tensor:
        """(B, K) float32 class scores of a batch of normalised images."""
        return self.predict(self.forward(images)).float()

    def batches_scores(self, batches: Iterator[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """Scores (N, K) and labels (N,) of normalised batches, on the CPU."""
        scores, labels = [], []
        for x, y in batches:
            scores.append(self.scores_of(x).cpu())
            labels.append(y.cpu())
        if not scores:
            raise RuntimeError("no batch to score; check limit_eval")
        return torch.cat(scores), torch.cat(labels)

    def scores(self, split: str) -> tuple[Tensor, Tensor]:
        """Scores and labels of a split of the run's task (computed once per split)."""
        if split not in self._scores:
            self._scores[split] = self.batches_scores(
                self.task.eval_batches(split, self.batch_size)
            )
        return self._scores[split]

    @property
    def temperature(self) -> float:
        """The temperature fitted by NLL on the validation split (once)."""
        if self._temperature is None:
            self._temperature = fit_temperature(*self.scores(self.fit_split))
        return self._temperature

    def other_task(self, name: str, limit: int | None, root: str | None = None) -> Task:
        """Another registered dataset's task at this task's image size (far-OOD sets)."""
        if self._load_other is None:
            raise RuntimeError("this context cannot load other datasets")
        return self._load_other(name, limit, root)

    def other_split(self) -> str:
        """The split of another dataset a probe may read: test, or train while tuning."""
        return "test" if self.split == "test" else "train"


@contextlib.contextmanager
def evaluating(*modules: torch.nn.Module) -> Iterator[None]:
    """Eval mode for the block, the modules' previous modes restored after it."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes, strict=True):
            m.train(mode)


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """float32 matmuls and convolutions in full precision for the block (TF32 off, as probes
    compare values across devices), the previous settings restored after it."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    precision = torch.get_float32_matmul_precision()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn

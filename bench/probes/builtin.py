"""The built-in probes: ``calibration``, ``ood`` (open-set and far-OOD detection), ``corruptions``.

Each writes flat named values; a name's last dot-separated part says what it is (``ece``,
``auroc``, ``acc``...), which is how the report knows whether higher or lower is better.

- ``calibration``: ``ece``, ``ace`` (adaptive ECE), ``cw_ece`` (classwise ECE), ``nll``,
  ``brier`` of softmax(scores / T) with the fitted temperature ``temperature``, the same with
  ``_raw`` appended at T = 1 (the loss's scores as they are), ``acc``, and the reliability
  diagram's bins ``reliability.<m>.conf|acc|share`` (and ``reliability_raw.<m>...``).
- ``ood``: for each OOD set (``open-set``: the held-out classes of an open-set split, the
  near-OOD set; a far-OOD dataset by its name) and each score (``msp``, ``max-logit``,
  ``energy``): ``<set>.<score>.auroc|aupr_in|aupr_out|fpr95`` with in-distribution positive,
  OpenOOD's convention beside them (``openood_aupr_in|openood_aupr_out|openood_fpr95``: OOD
  positive, trapezoidal AUPR), and the ROC curve of the first score at fixed false-positive
  rates ``<set>.<score>.roc.tpr_at_fprNNN`` (NNN in percent). Headlines for the first score,
  near and far apart: ``near.<metric>`` (the open-set split) and ``far.<metric>`` (the mean
  over the far-OOD datasets).
- ``corruptions``: ``clean.acc``, ``<corruption>.s<severity>.acc``, ``<corruption>.acc`` (mean
  over severities), ``n`` (the images measured), ``mca``, the mean corruption accuracy over the
  benchmark's corruptions and severities, and ``extras.mca`` over the held-out extras
  (speckle noise, gaussian blur, saturate), each only when some were measured.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor

from podbench.errors import UserError
from podbench.probes.base import Probe, ProbeContext
from podbench.probes.calibration import (
    DEFAULT_BINS,
    adaptive_calibration_error,
    brier_score,
    classwise_calibration_error,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_bins,
    softmax_probabilities,
)
from podbench.probes.corruptions import CORRUPTIONS, SEVERITIES, corrupt, corruption_names
from podbench.probes.detection import ROC_FPR_GRID, detection_metrics, detection_score, tpr_at_fpr
from podbench.probes.registry import register_probe

if TYPE_CHECKING:
    from podbench.runs import RunSettings

__all__ = ["CalibrationProbe", "CorruptionsProbe", "OodProbe", "convert_channels"]

OPEN_SET = "open-set"
DETECTION_METRICS = (
    "auroc",
    "aupr_in",
    "aupr_out",
    "fpr95",
    "openood_aupr_in",
    "openood_aupr_out",
    "openood_fpr95",
)


def _finite(value: float) -> float | None:
    return None if value != value else float(value)  # NaN (an empty bin) is recorded as null


@register_probe(
    "calibration",
    description="ECE, adaptive and classwise ECE, NLL and Brier score before and after "
    "temperature scaling (T fitted on the validation split), reliability diagrams",
)
class CalibrationProbe(Probe):
    """Calibration of softmax(scores / T), T fitted by NLL on validation (Guo et al. 2017)."""

    class Settings(BaseModel):
        model_config = ConfigDict(extra="forbid")
        bins: int = Field(DEFAULT_BINS, ge=2, le=100)

    def measure(self, context: ProbeContext) -> dict[str, float | None]:
        scores, labels = context.scores(context.split)
        bins = self.settings.bins
        out: dict[str, float | None] = {
            "temperature": context.temperature,
            "acc": float((scores.argmax(1) == labels).double().mean()),
        }
        for suffix, t in (("", context.temperature), ("_raw", 1.0)):
            probs = softmax_probabilities(scores, t)
            out[f"ece{suffix}"] = expected_calibration_error(probs, labels, bins)
            out[f"ace{suffix}"] = adaptive_calibration_error(probs, labels, bins)
            out[f"cw_ece{suffix}"] = classwise_calibration_error(probs, labels, bins)
            out[f"nll{suffix}"] = negative_log_likelihood(scores, labels, t)
            out[f"brier{suffix}"] = brier_score(probs, labels)
            conf, acc, share = reliability_bins(probs, labels, bins)
            for m in range(bins):
                key = f"reliability{suffix}.{m:02d}"
                out[f"{key}.conf"] = _finite(conf[m])
                out[f"{key}.acc"] = _finite(acc[m])
                out[f"{key}.share"] = float(share[m])
        return out


def convert_channels(images: Tensor, channels: int) -> Tensor:
    """[0, 1] images to ``channels`` channels: grey repeated, or RGB to luma (ITU-R 601-2, as PIL)."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1:
        return images.expand(-1, channels, -1, -1)
    if channels == 1 and have == 3:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device)
        return (images * weights.view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
    raise ValueError(f"cannot convert {have}-channel images to {channels} channels")


@register_probe(
    "ood",
    description="open-set (near) and far-OOD detection (max probability, max logit, energy): "
    "AUROC, AUPR-in, AUPR-out, FPR at 95% TPR, in-distribution positive, and "
    "OpenOOD's convention",
)
class OodProbe(Probe):
    """Detection of the held-out classes of an open-set split and of other datasets."""

    class Settings(BaseModel):
        model_config = ConfigDict(extra="forbid")
        datasets: list[str] = Field(default_factory=list)  # far-OOD sets, any registered dataset
        scores: list[Literal["msp", "max-logit", "energy"]] = Field(
            default=["msp", "max-logit", "energy"], min_length=1
        )  # pydantic copies it
        open_set: bool = True  # the held-out classes, when the run has an open-set split
        limit: int | None = Field(None, ge=1)  # at most this many samples of each far-OOD set
        data_root: str | None = None  # where the far-OOD sets are (None: $PODBENCH_DATA, defaults)

        @field_validator("scores")
        @classmethod
        def _distinct(cls, value: list[str]) -> list[str]:
            if len(set(value)) != len(value):
                raise ValueError("list each score once")
            return value

    def check_run(self, run: RunSettings, where: str = "evaluate") -> None:
        if not self.settings.datasets and not (self.settings.open_set and run.open_set):
            raise UserError(
                f"{where}: the ood probe has no OOD set; list far-OOD datasets "
                "(datasets: [svhn]) or train on an open-set split (open_set: "
                "{known: 6})."
            )

    def _far_scores(self, context: ProbeContext, name: str) -> Tensor:
        other = context.other_task(name, self.settings.limit, self.settings.data_root)
        channels = context.task.info.channels

        def batches() -> object:
            for x, y in other.pixel_batches(context.other_split(), context.batch_size):
                yield context.task.from_pixels(convert_channels(x, channels)), y

        return context.batches_scores(batches())[0]  # type: ignore[arg-type]

    def measure(self, context: ProbeContext) -> dict[str, float | None]:
        inside, _ = context.scores(context.split)
        sets: dict[str, Tensor] = {}
        unknown = f"{context.split}-unknown"
        if self.settings.open_set and unknown in context.task.splits:
            sets[OPEN_SET] = context.scores(unknown)[0]
        for name in self.settings.datasets:
            sets[name] = self._far_scores(context, name)
        if not sets:
            raise ValueError(
                "the ood probe has no OOD set: give datasets: [...] or run an "
                "open-set split (open_set: {known: 6})"
            )
        t = context.temperature
        out: dict[str, float | None] = {}
        first = self.settings.scores[0]
        for set_name, outside in sets.items():
            for kind in self.settings.scores:
                id_s, ood_s = detection_score(inside, kind, t), detection_score(outside, kind, t)
                for metric, value in detection_metrics(id_s, ood_s).items():
                    out[f"{set_name}.{kind}.{metric}"] = value
                if kind == first:
                    for fpr, tpr in zip(ROC_FPR_GRID, tpr_at_fpr(id_s, ood_s), strict=True):
                        out[f"{set_name}.{kind}.roc.tpr_at_fpr{round(fpr * 100):03d}"] = tpr
        far = [s for s in sets if s != OPEN_SET]
        for metric in DETECTION_METRICS:
            if OPEN_SET in sets:
                out[f"near.{metric}"] = out[f"{OPEN_SET}.{first}.{metric}"]
            if far:
                values = [out[f"{s}.{first}.{metric}"] for s in far]
                out[f"far.{metric}"] = sum(v for v in values if v is not None) / len(values)
        return out


def _stream(seed: int, batch: int, name: str, severity: int) -> torch.Generator:
    """A CPU generator per (run seed, batch, corruption, severity): the same draws on any device,
    and a corruption's draws do not depend on which others are measured."""
    key = [seed, batch, zlib.crc32(name.encode()), severity]
    state = np.random.SeedSequence(key).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(state[0]) >> 1)


@register_probe(
    "corruptions",
    description="accuracy under CIFAR-10-C corruptions generated on the device, 5 severities "
    "(14 of the benchmark's 15, frost left out, and 3 held-out extras)",
)
class CorruptionsProbe(Probe):
    """Accuracy on corrupted copies of the evaluation split (Hendrycks & Dietterich 2019)."""

    class Settings(BaseModel):
        model_config = ConfigDict(extra="forbid")
        corruptions: list[str] | None = None  # None: every one that applies to the images
        severities: list[int] = Field(default_factory=lambda: list(SEVERITIES), min_length=1)
        limit: int | None = Field(None, ge=1)  # the first N samples of the split

        @field_validator("corruptions")
        @classmethod
        def _known(cls, value: list[str] | None) -> list[str] | None:
            for name in value or []:
                if name not in CORRUPTIONS:
                    raise ValueError(
                        f"unknown corruption {name!r}; use some of {', '.join(CORRUPTIONS)}"
                    )
            return value

        @field_validator("severities")
        @classmethod
        def _severities(cls, value: list[int]) -> list[int]:
            if any(s not in SEVERITIES for s in value) or len(set(value)) != len(value):
                raise ValueError("severities must be distinct values of 1..5")
            return value

    def measure(self, context: ProbeContext) -> dict[str, float | None]:
        channels = context.task.info.channels
        names = self.settings.corruptions or corruption_names(channels)
        for name in names:
            if CORRUPTIONS[name].rgb_only and channels != 3:
                raise ValueError(
                    f"corruption {name!r} needs RGB images; this dataset has {channels} channel(s)"
                )
        cells = [(n, s) for n in names for s in self.settings.severities]
        correct = dict.fromkeys([("clean", 0), *cells], 0)
        seen = 0
        limit = self.settings.limit
        for index, (x, y) in enumerate(
            context.task.pixel_batches(context.split, context.batch_size)
        ):
            if limit is not None and seen >= limit:
                break
            if limit is not None:
                x, y = x[: limit - seen], y[: limit - seen]
            seen += int(y.shape[0])
            correct[("clean", 0)] += self._hits(context, x, y)
            for name, severity in cells:
                correct[(name, severity)] += self._hits(
                    context,
                    corrupt(x, name, severity, _stream(context.seed, index, name, severity)),
                    y,
                )
        if seen == 0:
            raise RuntimeError(f"the {context.split} split yielded no sample")
        out: dict[str, float | None] = {"clean.acc": correct[("clean", 0)] / seen, "n": seen}
        for name, severity in cells:
            out[f"{name}.s{severity}.acc"] = correct[(name, severity)] / seen
        for name in names:
            accs = [correct[(name, s)] / seen for s in self.settings.severities]
            out[f"{name}.acc"] = sum(accs) / len(accs)
        for key, benchmark in (("mca", True), ("extras.mca", False)):
            mine = [c for c in cells if CORRUPTIONS[c[0]].benchmark == benchmark]
            if mine:
                out[key] = sum(correct[c] for c in mine) / (seen * len(mine))
        return out

    @staticmethod
    def _hits(context: ProbeContext, images: Tensor, labels: Tensor) -> int:
        scores = context.scores_of(context.task.from_pixels(images))
        return int((scores.argmax(dim=1) == labels).sum())

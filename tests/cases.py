"""Shared cases for the probe metrics and the statistics, in the style of torchmetrics' test
inputs: every metric runs against its reference on each case, and each case is built to catch
one kind of slip (a tie broken the wrong way, an edge put in the wrong bin, a channel that
borrows another's mean, a lower-is-better metric ranked the wrong way).

- :func:`calibration_cases`: (name, probs (N, K) float64, labels (N,), bins) with mixed hits and
  misses; ties of confidence; confidences exactly on the bin edges (bins a power of two, so the
  edges are exact binary fractions); two classes; one bin holding every sample; every sample a
  miss.
- :func:`detection_cases`: (name, in-distribution scores, OOD scores): continuous, heavily tied,
  every score equal, perfectly separated, reversed, one OOD sample, unequal sizes.
- :func:`rank_cases`: (name, blocks x methods table, higher_is_better, hand-worked mean ranks).
- :func:`channel_cases`: (name, (B, C, H, W) 8-bit levels) whose channels have distinct means.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch


class CalibrationCase(NamedTuple):
    name: str
    probs: torch.Tensor
    labels: torch.Tensor
    bins: int


class DetectionCase(NamedTuple):
    name: str
    inside: torch.Tensor
    outside: torch.Tensor


class RankCase(NamedTuple):
    name: str
    table: pd.DataFrame
    higher_is_better: bool
    expected: dict[str, float]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _softmax_case(n: int, k: int, seed: int, hit_share: float) -> tuple[torch.Tensor, torch.Tensor]:
    gen = _gen(seed)
    logits = torch.randn(n, k, generator=gen, dtype=torch.float64) * 2.5
    labels = torch.randint(0, k, (n,), generator=gen)
    labels = torch.where(torch.rand(n, generator=gen) < hit_share, logits.argmax(1), labels)
    return torch.softmax(logits, 1), labels


def _on_edges(bins: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top probabilities exactly on the edges m / bins above 1 / k (and just either side), each
    edge value with hits and misses."""
    rng = np.random.default_rng(seed)
    tops = [m / bins for m in range(1, bins + 1) if m / bins > 1 / k]
    tops += [t + s for t in tops[:-1] for s in (-1e-9, 1e-9)]
    rows, labels = [], []
    for i, top in enumerate(sorted(tops * 4)):
        rest = np.full(k - 1, (1 - top) / (k - 1))
        rows.append(np.r_[top, rest])
        labels.append(0 if i % 2 == 0 else int(rng.integers(1, k)))  # hit, miss, hit, miss...
    return torch.tensor(np.array(rows)), torch.tensor(labels)


def calibration_cases() -> Iterator[CalibrationCase]:
    probs, labels = _softmax_case(1500, 7, 0, 0.6)
    yield CalibrationCase("mixed-hits", probs, labels, 15)
    # few distinct probability rows: many samples share a confidence (ties across bins' cuts)
    probs, labels = _softmax_case(12, 4, 1, 0.5)
    index = torch.randint(0, 12, (600,), generator=_gen(2))
    yield CalibrationCase(
        "tied-confidences", probs[index], torch.randint(0, 4, (600,), generator=_gen(3)), 10
    )
    probs, labels = _on_edges(8, 3, 4)
    yield CalibrationCase("exact-bin-edges", probs, labels, 8)
    probs, labels = _softmax_case(400, 2, 5, 0.7)
    yield CalibrationCase("two-classes", probs, labels, 15)
    probs = torch.full((50, 5), 0.1, dtype=torch.float64)
    probs[:, 0] = 0.6
    yield CalibrationCase("one-bin", probs, torch.tensor([0, 1] * 25), 15)
    probs, labels = _softmax_case(300, 5, 6, 0.0)
    yield CalibrationCase("all-misses", probs, (probs.argmax(1) + 1) % 5, 15)


def detection_cases() -> Iterator[DetectionCase]:
    gen = _gen(7)
    inside = torch.randn(700, generator=gen, dtype=torch.float64) + 1.0
    outside = torch.randn(400, generator=gen, dtype=torch.float64)
    yield DetectionCase("continuous", inside, outside)
    yield DetectionCase("heavy-ties", inside.round(), outside.round())
    yield DetectionCase(
        "all-equal", torch.ones(30, dtype=torch.float64), torch.ones(20, dtype=torch.float64)
    )
    yield DetectionCase("separated", inside + 10.0, outside)
    yield DetectionCase("reversed", outside, inside + 10.0)
    yield DetectionCase("one-ood-sample", inside, outside[:1])
    yield DetectionCase(
        "msp-like",
        torch.sigmoid(inside * 3).round(decimals=2),
        torch.sigmoid(outside * 3).round(decimals=2),
    )


def rank_cases() -> Iterator[RankCase]:
    # ties share the average of the ranks they span
    table = pd.DataFrame(
        [[0.9, 0.9, 0.8], [0.7, 0.8, 0.8], [0.5, 0.5, 0.5]], columns=["a", "b", "c"]
    )
    yield RankCase(
        "ties-higher-better",
        table,
        True,
        {"a": (1.5 + 3 + 2) / 3, "b": (1.5 + 1.5 + 2) / 3, "c": (3 + 1.5 + 2) / 3},
    )
    # a lower-is-better metric (an error, ECE): the smallest value ranks 1
    yield RankCase(
        "ties-lower-better",
        table,
        False,
        {"a": (2.5 + 1 + 2) / 3, "b": (2.5 + 2.5 + 2) / 3, "c": (1 + 2.5 + 2) / 3},
    )
    # failed runs scored as the worst value (--failed worst): three methods tie at the bottom
    worst = pd.DataFrame([[0.8, 0.0, 0.0, 0.0], [0.6, 0.7, 0.0, 0.0]], columns=list("pqrs"))
    yield RankCase(
        "worst-ties",
        worst,
        True,
        {"p": (1 + 2) / 2, "q": (3 + 1) / 2, "r": (3 + 3.5) / 2, "s": (3 + 3.5) / 2},
    )


def channel_cases() -> Iterator[tuple[str, torch.Tensor]]:
    gen = _gen(8)
    base = torch.randint(0, 100, (2, 3, 8, 8), generator=gen)
    yield "distinct-means", base + torch.tensor([0, 60, 150]).view(1, 3, 1, 1)
    yield "one-flat-channel", torch.cat([base[:, :2], torch.full((2, 1, 8, 8), 200)], dim=1)

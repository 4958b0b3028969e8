"""Convergence as AlgoPerf and DeepOBS measure it: time to a target accuracy per block,
performance profiles over blocks and the AlgoPerf benchmark score.

Per block the target is a stated fraction of the best method's median final test accuracy. Each
run's time to target is the epochs (counted from 1) and the wall seconds (the sum of its epoch
seconds) until its test accuracy first reaches the target, infinite when it never does; a method's
time in a block is the median over its runs. The performance ratio is that time over the fastest
method's in the block; the profile rho(tau) is the share of blocks with ratio <= tau (Dolan and
Moré 2002), and the benchmark score is (1/(r_max-1)) times its integral from 1 to r_max = 4
(Dahl et al. 2023, "Benchmarking Neural Network Training Algorithms").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from podbench.reports.observations import Observations, block_key
from podbench.reports.records import ResultsData

__all__ = [
    "R_MAX",
    "TARGET_FRACTION",
    "Convergence",
    "benchmark_score",
    "convergence",
    "performance_profile",
    "performance_ratios",
    "time_to_target",
]

R_MAX = 4.0
TARGET_FRACTION = 0.99
MEASURES = ("epochs", "seconds")


def time_to_target(
    test_acc: Sequence[float | None], seconds: Sequence[float | None] | None, target: float
) -> tuple[float, float]:
    """Epochs (from 1) and wall seconds until ``test_acc`` first reaches ``target``.

    Returns ``(inf, inf)`` when it never does; seconds are NaN when an epoch's time is unknown.
    """
    for i, acc in enumerate(test_acc):
        if acc is not None and math.isfinite(acc) and acc >= target:
            if seconds is None:
                return float(i + 1), math.nan
            spent = [s for s in seconds[: i + 1]]
            known = all(s is not None and math.isfinite(s) for s in spent)
            return float(i + 1), float(sum(spent)) if known else math.nan  # type: ignore[arg-type]
    return math.inf, math.inf


def performance_ratios(times: pd.DataFrame) -> pd.DataFrame:
    """Blocks × methods times over the fastest method's time in each block.

    Infinite times stay infinite; in a block where no method reached the target every ratio is
    infinite.
    """
    best = times.min(axis=1)
    ratios = times.div(best.where(np.isfinite(best) & (best > 0)), axis=0)
    return ratios.where(np.isfinite(times), math.inf).fillna(math.inf)


def performance_profile(ratios: Sequence[float], taus: Sequence[float] | np.ndarray) -> np.ndarray:
    """rho(tau): the share of blocks whose performance ratio is at most tau, for each tau."""
    r = np.asarray(ratios, float)
    return (r[None, :] <= np.asarray(taus, float)[:, None]).mean(axis=1)


def benchmark_score(ratios: Sequence[float], r_max: float = R_MAX) -> float:
    """AlgoPerf's score (1/(r_max-1)) ∫_1^r_max rho(tau) dtau, exact for the step function rho:
    a block with ratio r <= r_max contributes (r_max - r), one never within r_max nothing."""
    r = np.asarray(ratios, float)
    inside = r[r <= r_max]
    return float((r_max - inside).sum() / (r.size * (r_max - 1)))


@dataclass(frozen=True)
class BlockTarget:
    """A block's target accuracy (percent) and where it comes from."""

    block: str
    best_method: str
    best_median_final: float
    target: float


@dataclass(frozen=True)
class RunToTarget:
    """One run's epochs and wall seconds to its block's target (None: never reached)."""

    run_id: str
    label: str
    block: str
    seed: int
    status: str
    reached: bool
    epochs: float | None
    seconds: float | None
    epochs_run: int


@dataclass(frozen=True)
class MethodToTarget:
    """A method's median time to target in a block and its ratio to the fastest method."""

    block: str
    label: str
    n_runs: int
    n_reached: int
    epochs: float | None  # None: the median run never reached the target
    seconds: float | None
    ratio_epochs: float | None
    ratio_seconds: float | None
    seconds_recorded: bool  # every run that reached the target recorded its epoch seconds


@dataclass(frozen=True)
class Profile:
    """A method's performance ratios over blocks and its benchmark score, for one measure."""

    label: str
    measure: str
    ratios: dict[str, float | None]  # None: never within a finite ratio
    score: float
    fastest_share: float  # rho(1): share of blocks where the method was (one of) the fastest


@dataclass(frozen=True)
class Convergence:
    """Time to target, performance profiles and benchmark scores."""

    target_fraction: float
    r_max: float
    policy: str
    targets: list[BlockTarget]
    runs: list[RunToTarget]
    methods: list[MethodToTarget]
    profile_blocks: list[str]
    profiles: list[Profile]


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _epoch_history(data: ResultsData) -> pd.DataFrame:
    """Per run and epoch: test accuracy and the epoch's seconds (from the records if the history
    table does not carry them)."""
    hist = data.history
    if "seconds" in hist:
        return hist[["run_id", "epoch", "test_acc", "seconds"]]
    rows = [
        {
            "run_id": str(rec["run_id"]),
            "epoch": entry.get("epoch"),
            "test_acc": entry.get("test_acc"),
            "seconds": entry.get("seconds"),
        }
        for rec in data.records
        for entry in rec.get("history") or []
        if isinstance(entry, dict)
    ]
    out = pd.DataFrame(rows, columns=["run_id", "epoch", "test_acc", "seconds"])
    return out.apply(lambda c: pd.to_numeric(c, errors="coerce") if c.name != "run_id" else c)


def _targets(
    obs: Observations, blocks: list[tuple[str, str]], fraction: float
) -> dict[tuple[str, str], BlockTarget]:
    runs = obs.runs
    done = runs[(runs["status"] == "completed") & runs["final_test_acc"].notna()]
    out = {}
    for d, a in blocks:
        here = done[(done["dataset"] == d) & (done["arch"] == a)]
        if here.empty:
            continue
        medians = here.groupby("label")["final_test_acc"].median() * 100
        best = str(medians.idxmax())
        out[(d, a)] = BlockTarget(
            block_key(d, a), best, float(medians[best]), float(fraction * medians[best])
        )
    return out


def _run_times(
    obs: Observations,
    data: ResultsData,
    targets: dict[tuple[str, str], BlockTarget],
    methods: list[str],
) -> list[RunToTarget]:
    """Completed runs by their history; diverged/failed runs never reach it under ``worst``."""
    table = _epoch_history(data)
    empty = table.iloc[0:0]
    hist = {str(k): g.sort_values("epoch") for k, g in table.groupby("run_id")}
    runs = obs.runs[obs.runs["label"].isin(methods)]
    order = {lab: i for i, lab in enumerate(obs.labels)}
    runs = runs.assign(_o=runs["label"].map(order)).sort_values(["dataset", "arch", "_o", "seed"])
    out = []
    for r in runs.itertuples():
        target = targets.get((r.dataset, r.arch))
        if target is None or r.status not in ("completed", "diverged", "failed"):
            continue
        h = hist.get(str(r.run_id), empty)
        if r.status == "completed":
            if h.empty:
                continue
            acc = [None if pd.isna(v) else 100 * float(v) for v in h["test_acc"]]
            secs = [None if pd.isna(v) else float(v) for v in h["seconds"]]
            epochs, seconds = time_to_target(acc, secs, target.target)
        elif obs.failure.policy == "worst":
            epochs, seconds = math.inf, math.inf  # counts against its method, like its value
        else:
            continue
        out.append(
            RunToTarget(
                run_id=r.run_id,
                label=r.label,
                block=target.block,
                seed=int(r.seed),
                status=r.status,
                reached=math.isfinite(epochs),
                epochs=_finite(epochs),
                seconds=None if math.isnan(seconds) else _finite(seconds),
                epochs_run=int(len(h)),
            )
        )
    return out


def _median_times(
    runs: list[RunToTarget], blocks: list[str], methods: list[str]
) -> dict[str, pd.DataFrame]:
    """Per measure, blocks × methods median times (inf: never; NaN: no run or unknown)."""
    df = pd.DataFrame([vars(r) for r in runs], columns=list(RunToTarget.__dataclass_fields__))
    out = {}
    for measure in MEASURES:
        col = df[measure].astype(float).where(df["reached"], math.inf)
        if measure == "seconds":  # a reached run without epoch seconds has no time
            col = col.where(~(df["reached"] & df["seconds"].isna()), math.nan)
        table = (
            df.assign(t=col)
            .groupby(["block", "label"])["t"]
            .agg(lambda t: np.nan if t.isna().any() else float(np.median(t)))
            .unstack("label")
        )
        out[measure] = table.reindex(index=blocks, columns=methods)
    return out


def _per_method(
    runs: list[RunToTarget],
    times: dict[str, pd.DataFrame],
    ratios: dict[str, pd.DataFrame],
    methods: list[str],
) -> list[MethodToTarget]:
    """Per block and method with runs: runs reaching the target, median times and ratios."""
    out = []
    for name in times["epochs"].index:
        for lab in methods:
            here = [r for r in runs if r.block == name and r.label == lab]
            if not here:
                continue
            ep, sec = times["epochs"].loc[name, lab], times["seconds"].loc[name, lab]
            known = bool(pd.notna(sec))
            out.append(
                MethodToTarget(
                    block=name,
                    label=lab,
                    n_runs=len(here),
                    n_reached=sum(r.reached for r in here),
                    epochs=_finite(ep),
                    seconds=_finite(sec) if known else None,
                    ratio_epochs=_finite(ratios["epochs"].loc[name, lab]),
                    ratio_seconds=_finite(ratios["seconds"].loc[name, lab]) if known else None,
                    seconds_recorded=known,
                )
            )
    return out


def _profiles(
    times: dict[str, pd.DataFrame], ratios: dict[str, pd.DataFrame], methods: list[str]
) -> list[Profile]:
    """Per measure whose time is known for every method in every block: each method's profile."""
    out = []
    for measure in MEASURES:
        table = times[measure]
        if table.empty or table.isna().to_numpy().any():
            continue  # a profile needs every method's time in every block
        for lab in methods:
            r = ratios[measure][lab].to_numpy(float)
            out.append(
                Profile(
                    label=lab,
                    measure=measure,
                    ratios={b: _finite(v) for b, v in zip(table.index, r, strict=True)},
                    score=benchmark_score(r),
                    fastest_share=float(performance_profile(r, [1.0])[0]),
                )
            )
    return out


def convergence(
    data: ResultsData,
    obs: Observations,
    methods: list[str],
    blocks: list[tuple[str, str]],
    fraction: float = TARGET_FRACTION,
) -> Convergence:
    """Time to target per run and method, and performance profiles over ``blocks`` of
    ``methods`` (those of the across-block table)."""
    targets = _targets(obs, blocks, fraction)
    runs = _run_times(obs, data, targets, methods)
    names = [block_key(*b) for b in blocks if b in targets]
    times = _median_times(runs, names, methods)
    ratios = {m: performance_ratios(t) for m, t in times.items()}
    return Convergence(
        target_fraction=fraction,
        r_max=R_MAX,
        policy=obs.failure.policy,
        targets=list(targets.values()),
        runs=runs,
        methods=_per_method(runs, times, ratios, methods),
        profile_blocks=names,
        profiles=_profiles(times, ratios, methods),
    )

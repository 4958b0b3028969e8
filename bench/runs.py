"""One run, fully resolved: its settings, its identity (``run_id``) and the defaults filled into it.

Suite files (:mod:`podbench.suite_spec`) and tune files (:mod:`podbench.tuning`) both end in
:class:`RunSpec` objects, which the executor hands to the training engine. :class:`RunSettings`
holds the settings every run of a file shares; :func:`resolve_run` adds one grid point (loss,
dataset, architecture, seed...) and the dataset's and authors' defaults.

Example:
    >>> run = resolve_run(RunSettings(epochs=3), suite="s", loss="pod", dataset="digits",
    ...                   arch="mlp", seed=0, feat_dim=16)
    >>> len(run.run_id), run.epochs, run.batch_size  # the digits dataset's batch size
    (16, 3, 128)
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from podbench.errors import UserError, excerpt, shorten

__all__ = [
    "DEFAULT_MAX_RUNS",
    "MAX_FEAT_DIM",
    "NON_RESULT_FIELDS",
    "LabelNoiseSettings",
    "OpenSetSettings",
    "ProbeEntry",
    "RunSettings",
    "RunSpec",
    "check_joins_results",
    "check_one_setting_per_method",
    "feat_dim_problem",
    "resolve_run",
    "result_fields",
    "whole_number",
    "with_tag",
]

# Fields that do not change what a run computes, hence not its run_id: names, plugin imports,
# where the data lives, and where and how fast the run executes.
_NAMES_AND_RESOURCES = frozenset({"suite", "label", "imports", "cpus", "gpus", "checkpoint"})
# Also not part of the result, but hashed at these defaults rather than dropped, so that the
# run ids written before they were left out still match (finished runs do not look new).
_HASHED_AT_DEFAULT: dict[str, Any] = {
    "data_root": None,
    "device": "auto",
    "channels_last": False,
    "compile": False,
}
NON_RESULT_FIELDS = _NAMES_AND_RESOURCES | frozenset(_HASHED_AT_DEFAULT)
# Result-determining fields added later: left out of the hash while at their defaults, so the
# run ids written before they existed still match.
_DROPPED_AT_DEFAULT: dict[str, Any] = {
    "evaluate": [],
    "label_noise": None,
    "open_set": None,
    "deterministic": True,
    "warmup": None,
    "drop_last": False,
    "augmentation": "dataset",
    "lookahead": False,
    "tta": False,
    "proj": "linear",
}
# Authors' milestones 30/60/90 of 100 epochs, scaled to the run's epoch count.
AUTHORS_MILESTONE_FRACTIONS = (0.3, 0.6, 0.9)
DEFAULT_EPOCHS = 100  # the authors' budget (LOSSES.md)
DEFAULT_BATCH_SIZE = 128  # for datasets the authors did not use
# Runs one suite (or one tune file's trials or reruns) may make unless --max-runs says more:
# the largest built-in suite makes 120; a grid of millions is a typo, found before it is built.
DEFAULT_MAX_RUNS = 10_000
# The largest latent dimension a run may have: the loss's class centres (classes x feat_dim) and
# the network's last layer grow with it; 2**16 already needs 2.6 GB for 10,000 classes.
MAX_FEAT_DIM = 65_536


def whole_number(value: Any) -> Any:
    """``"1e9"`` -> 1000000000: a number YAML 1.1 left as text (no dot), when whole; else as is."""
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9]+(\.[0-9]*)?[eE][+]?[0-9]+\s*", value):
        number = float(value)
        return int(number) if number.is_integer() else value
    return value


def feat_dim_problem(value: int) -> str | None:
    """Why ``value`` is not a usable latent dimension, or None when it is."""
    if value < 1:
        return "feat_dim must be a positive integer"
    if value > MAX_FEAT_DIM:
        gigabytes = value * 10 * 4 / 1e9  # float32 centres of a 10-class dataset alone
        return (
            f"feat_dim {value} is above {MAX_FEAT_DIM}, the largest latent dimension podbench "
            f"builds (the class centres alone would take {gigabytes:,.1f} GB for 10 classes); "
            "use a smaller feat_dim such as 512"
        )
    return None


class ProbeEntry(BaseModel):
    """An evaluation probe a run measures: its registered name, how often, and its settings.

    Keys other than ``name`` and ``every`` are the probe's own settings (checked against the
    probe's ``Settings`` when the spec is loaded).
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    every: int | None = Field(None, ge=1)  # also after every k-th epoch, not only at the end

    def probe_settings(self) -> dict[str, Any]:
        """The probe's own settings: every key but ``name`` and ``every``."""
        return dict(self.model_extra or {})


class LabelNoiseSettings(BaseModel):
    """Noise on the training labels (podbench.tasks.label_noise): validation and test stay clean."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["symmetric", "asymmetric", "pair"]
    rate: float = Field(ge=0, lt=1)
    seed: int | None = Field(None, ge=0)  # None: the run's seed


class OpenSetSettings(BaseModel):
    """An open-set split: train on ``known`` classes drawn by ``seed``; the others are unknowns."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    known: int = Field(ge=2)
    seed: int = Field(0, ge=0)


def _probe_shorthand(value: Any) -> Any:
    """``[calibration, {name: ood, ...}]``: a bare name is an entry without settings."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        return [{"name": v} if isinstance(v, str) else v for v in value]
    return value


class RunSettings(BaseModel):
    """Run settings shared by every run of a suite (and by tuning trials).

    ``None`` in ``batch_size``, ``milestones`` means "the dataset's / authors' default", filled
    in by :func:`resolve_run`.
    """

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(DEFAULT_EPOCHS, ge=1)
    batch_size: int | None = Field(None, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    nesterov: bool = False
    # triangular: airbench94's (linear 0.2x -> 1x over `warmup` of the steps -> 0.07x, constant
    # momentum); onecycle: PyTorch's OneCycleLR (cosine, momentum cycled 0.95 -> momentum)
    schedule: Literal["multistep", "cosine", "onecycle", "constant", "triangular"] = "multistep"
    # share of the steps the learning rate rises: None = 0.3 (onecycle), 0.23 (triangular)
    warmup: float | None = Field(None, gt=0, lt=1)
    milestones: list[int] | None = None
    gamma: float = Field(0.1, gt=0)
    grad_clip: float | None = Field(None, gt=0)
    amp: Literal["off", "bf16", "fp16"] = "off"
    # channels-last layout for data and network: auto = on CUDA (where it helps convolutions:
    # tensor cores) and, on the CPU, where a one-time probe of the network finds it faster
    # (podbench.layout); it does not change results, so it is not in the run id
    channels_last: bool | Literal["auto"] = "auto"
    compile: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    eval_split: Literal["test", "val"] = "test"
    val_fraction: float = Field(0.1, gt=0, lt=1)
    split_seed: int = 0
    limit_train: int | None = Field(None, ge=1)
    limit_eval: int | None = Field(None, ge=1)
    max_steps: int | None = Field(None, ge=1)
    # the run's CPU share: its torch intra-op threads (one inter-op thread); 1 by default, as
    # N runs x 1 thread trained faster than 1 run x N threads (benchmarks/bench_threads.py)
    cpus: float = Field(1.0, gt=0)
    gpus: float = Field(0.0, ge=0)
    # deterministic kernels, cudnn.benchmark off (reproducible); false: fastest kernels
    deterministic: bool = True
    checkpoint: bool = False
    data_root: str | None = None
    image_size: int | None = Field(None, ge=1)
    imports: list[str] = Field(default_factory=list)
    evaluate: list[ProbeEntry] = Field(default_factory=list)
    label_noise: LabelNoiseSettings | None = None
    open_set: OpenSetSettings | None = None
    # drop the last partial training batch of each epoch (airbench does)
    drop_last: bool = False
    # dataset: the dataset's crop and flip; airbench: alternating flips + 2-px reflect translation
    augmentation: Literal["dataset", "airbench"] = "dataset"
    # airbench's lookahead (podbench.recipe.Lookahead) of the network and the loss's head
    lookahead: bool = False
    # evaluate with airbench's test-time augmentation (6 views: flips and 1-px translations)
    tta: bool = False
    # linear: a Linear to feat_dim after the backbone; none: the backbone's features themselves
    proj: Literal["linear", "none"] = "linear"

    @field_validator("evaluate", mode="before")
    @classmethod
    def _evaluate_shorthand(cls, value: Any) -> Any:
        return _probe_shorthand(value)

    @field_validator("evaluate")
    @classmethod
    def _probes_once(cls, value: list[ProbeEntry]) -> list[ProbeEntry]:
        names = [e.name for e in value]
        if len(set(names)) != len(names):
            raise ValueError("list each probe once (its settings in one entry)")
        return value

    @field_validator("amp", mode="before")
    @classmethod
    def _amp_off(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `amp: off` (and --set amp=off) as false
        return "off" if value is False else value

    @field_validator("milestones")
    @classmethod
    def _milestones_sorted(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (any(m < 1 for m in value) or value != sorted(set(value))):
            raise ValueError("milestones must be increasing epoch numbers >= 1, e.g. [30, 60, 90]")
        return value

    @field_validator("gpus")
    @classmethod
    def _gpu_exactly_when_given(cls, value: float, info: ValidationInfo) -> float:
        # a run uses a GPU exactly when Ray gives it one, and trains on one device at most
        device = info.data.get("device")
        if value > 1:
            raise ValueError(
                f"a run trains on one GPU, so {value:g} GPUs would leave the rest idle; use 1, or "
                "a fraction such as 0.25 to pack four runs on a GPU"
            )
        if device == "cpu" and value > 0:
            raise ValueError(
                f"gpus: {value:g} with device: cpu reserves a GPU the run never uses; set gpus: 0, or "
                "device: auto to train on the GPU"
            )
        if device == "cuda" and value == 0:
            raise ValueError(
                "device: cuda needs gpus > 0, since a run gets a GPU only when Ray gives it one; "
                "set gpus: 1, or a fraction such as 0.25 to pack runs on a GPU"
            )
        return value

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> RunSettings:
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ValueError("nesterov: true needs optimizer: sgd with momentum > 0")
        if self.warmup is not None and self.schedule not in ("onecycle", "triangular"):
            raise ValueError(
                f"warmup is the rising share of schedule onecycle or triangular, "
                f"but schedule is {self.schedule}; remove warmup or change schedule"
            )
        return self


class RunSpec(RunSettings):
    """One fully resolved run: no grid left, every default filled in (see CONTRACTS.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    suite: str = "adhoc"
    loss: str
    variant: str | None = None
    loss_params: dict[str, Any] = Field(default_factory=dict)
    dataset: str
    arch: str
    feat_dim: int = Field(ge=1)
    seed: int = Field(0, ge=0)
    batch_size: int = Field(ge=1)
    milestones: list[int] = Field(default_factory=list)
    label: str = ""

    @model_validator(mode="before")
    @classmethod
    def _default_label(cls, data: Any) -> Any:
        # the compared method: the loss name, plus [variant] when it is a variant
        if isinstance(data, dict) and not data.get("label"):
            loss, variant = data.get("loss"), data.get("variant")
            data = {**data, "label": loss if variant is None else f"{loss}[{variant}]"}
        return data

    @field_validator("feat_dim")
    @classmethod
    def _feat_dim_buildable(cls, value: int) -> int:
        problem = feat_dim_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @property
    def run_id(self) -> str:
        """16 hex digits of sha256 over the canonical JSON of the result-determining fields."""
        payload = result_fields(self.model_dump(mode="json"))
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _authors_milestones(epochs: int) -> list[int]:
    """The epochs the authors' multistep schedule decays at, for a run of ``epochs`` epochs."""
    return sorted(
        {
            max(1, round(f * epochs))
            for f in AUTHORS_MILESTONE_FRACTIONS
            if round(f * epochs) < epochs
        }
    )


def result_fields(spec: dict[str, Any]) -> dict[str, Any]:
    """The fields of a run (as JSON, e.g. a record's ``spec``) that determine its result."""
    payload = {k: v for k, v in spec.items() if k not in _NAMES_AND_RESOURCES}
    payload.update(_HASHED_AT_DEFAULT)
    for key, default in _DROPPED_AT_DEFAULT.items():
        if key in payload and payload[key] == default:
            del payload[key]
    return payload


def resolve_run(
    settings: RunSettings,
    *,
    suite: str,
    loss: str,
    dataset: str,
    arch: str,
    seed: int,
    variant: str | None = None,
    loss_params: dict[str, Any] | None = None,
    feat_dim: int | None = None,
    data_root: str | None = None,
    batch_size: int | None = None,
    label: str | None = None,
    label_noise: LabelNoiseSettings | None = None,
) -> RunSpec:
    """Fill the dataset's and the authors' defaults into one run.

    Args:
        settings: shared run settings (a suite's or a tune file's).
        suite: suite or study name (not part of run_id).
        loss, dataset, arch, seed, variant, loss_params: the run's grid point.
        feat_dim: latent dimension; None = the dataset's (authors') latent dimension (a
            UserError naming ``feat_dim`` when the dataset has none).
        data_root: overrides ``settings.data_root`` when given.
        batch_size: overrides ``settings.batch_size`` when given; None in both = the dataset's
            (authors'), else 128.
        label: the compared method's name; None = ``loss`` or ``loss[variant]``.
        label_noise: overrides ``settings.label_noise`` when given (a suite's noise axis).
    """
    from podbench.tasks import dataset_info

    info = dataset_info(dataset)
    fields = settings.model_dump()
    fields["batch_size"] = (
        batch_size or settings.batch_size or int(info.batch_size or DEFAULT_BATCH_SIZE)
    )
    if feat_dim is None:
        feat_dim = info.latent_dim
    if feat_dim is None:
        raise UserError(
            f"feat_dim: dataset '{dataset}' has no authors' latent dimension to default to; "
            "set feat_dim (e.g. feat_dim: 32) in the suite."
        )
    if data_root is not None:
        fields["data_root"] = data_root
    if label_noise is not None:
        fields["label_noise"] = label_noise
    if settings.milestones is None:
        fields["milestones"] = _authors_milestones(settings.epochs)
    return RunSpec(
        **fields,
        suite=suite,
        loss=loss,
        variant=variant,
        loss_params=dict(loss_params or {}),
        dataset=dataset,
        arch=arch,
        feat_dim=int(feat_dim),
        seed=seed,
        label=label or "",
    )


# ---------------------------------------------------------------------------- one setting per method

# Runs of one method in one block may differ only in their seed: the block is the dataset, the
# architecture and the training condition (label noise, an open-set split), as in the report.
_BLOCK_FIELDS = ("dataset", "arch", "label_noise", "open_set")


def with_tag(label: str, tag: str) -> str:
    """``pod`` -> ``pod[tag]``, ``pod[no-sc]`` -> ``pod[no-sc,tag]``: a label naming one more setting."""
    return f"{label[:-1]},{tag}]" if label.endswith("]") and "[" in label else f"{label}[{tag}]"


def _method_key(spec: dict[str, Any]) -> tuple[str, str]:
    """(label, block text) of a run given as JSON."""
    condition = [
        f"{k} {json.dumps(spec[k], sort_keys=True)}"
        for k in ("label_noise", "open_set")
        if spec.get(k) is not None
    ]
    block = f"{spec.get('dataset')} / {spec.get('arch')}" + (
        f" ({', '.join(condition)})" if condition else ""
    )
    return str(spec.get("label") or spec.get("loss")), block


def _method_settings(spec: dict[str, Any]) -> dict[str, Any]:
    """What a method's runs in one block must share: the result fields but seed and block."""
    fields = result_fields(spec)
    out = {k: v for k, v in fields.items() if k not in _BLOCK_FIELDS and k != "seed"}
    params = out.pop("loss_params", None) or {}
    out.update({f"loss_params.{k}": v for k, v in params.items()})
    return out


def _differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """``key a vs b`` for each setting both give with different values (unknown ones skipped)."""
    params = {k for k in a.keys() | b.keys() if k.startswith("loss_params.")}
    keys = sorted((a.keys() & b.keys()) | params)
    return [
        f"{k} {excerpt(a.get(k), 30)} vs {excerpt(b.get(k), 30)}"
        for k in keys
        if a.get(k) != b.get(k)
    ]


def check_one_setting_per_method(
    runs: Iterable[dict[str, Any]],
    source: str,
    *,
    earlier: Iterable[dict[str, Any]] = (),
    earlier_where: str = "",
    fix: str = "",
) -> None:
    """Refuse runs that the report would pool as seeds of one method but differ in a setting.

    Args:
        runs: the runs to start (or of one suite), as JSON (``RunSpec.model_dump(mode="json")``).
        source: the spec file, for the message.
        earlier: runs that already have records (their ``spec``), which the new ones join.
        earlier_where: the results folder of ``earlier``, for the message.
        fix: the fix the message gives (default: one setting per method and block in the suite).

    Raises:
        UserError: naming the method, the block, the settings that differ and the fix.
    """
    known: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for spec in earlier:
        settings = _method_settings(spec)
        group = known.setdefault(_method_key(spec), [])
        if settings not in group:
            group.append(settings)
    n_earlier = {key: len(group) for key, group in known.items()}
    for spec in runs:
        key, settings = _method_key(spec), _method_settings(spec)
        group = known.setdefault(key, [])
        for i, other in enumerate(group):
            diffs = _differences(other, settings)
            if not diffs:
                continue
            shown = ", ".join(diffs[:4]) + (f" and {len(diffs) - 4} more" if len(diffs) > 4 else "")
            label, block = (shorten(part, 80) for part in key)
            if i < n_earlier.get(key, 0):
                raise UserError(
                    f"{source}: method '{label}' on {block} already has runs in {earlier_where} "
                    f"with other settings ({shown}), which the report would pool as its seeds; "
                    "give the loss its own label, or use another --results folder."
                )
            raise UserError(
                f"{source}: method '{label}' on {block} would pool runs of different settings "
                f"as its seeds ({shown}); "
                + (
                    fix
                    or "keep one setting per method and block: "
                    "give each setting its own label (label: in its losses entry), or list each "
                    "dataset once"
                )
                + "."
            )
        if not group or settings not in group:
            group.append(settings)


def check_joins_results(runs: Iterable[RunSpec], results_dir: Any, source: str) -> None:
    """Refuse runs that would join a results folder's method of another setting (same label and
    block): e.g. a tuned point run into the folder of a suite, under the suite's label.

    Records that cannot be read are left to the commands that read them.
    """
    from podbench.results import ResultsStore

    store = ResultsStore(results_dir)
    if not store.runs_dir.is_dir():
        return
    runs = list(runs)
    planned = [run.model_dump(mode="json") for run in runs]
    ids = {run.run_id for run in runs}
    earlier = []
    for path in sorted(store.runs_dir.glob("*.json")):
        if path.name.startswith(".") or path.stem in ids:
            continue
        try:
            record = store.read_record(path.stem)
        except UserError:
            continue
        if record and isinstance(record.get("spec"), dict):
            earlier.append({**record["spec"], "label": record.get("label")})
    check_one_setting_per_method(planned, source, earlier=earlier, earlier_where=str(store.root))

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
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from podbench.errors import UserError

__all__ = [
    "NON_RESULT_FIELDS",
    "LabelNoiseSettings",
    "OpenSetSettings",
    "ProbeEntry",
    "RunSettings",
    "RunSpec",
    "resolve_run",
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
_DROPPED_AT_DEFAULT: dict[str, Any] = {"evaluate": [], "label_noise": None, "open_set": None,
                                        "deterministic": True}
# Authors' milestones 30/60/90 of 100 epochs, scaled to the run's epoch count.
AUTHORS_MILESTONE_FRACTIONS = (0.3, 0.6, 0.9)
DEFAULT_EPOCHS = 100  # the authors' budget (LOSSES.md)
DEFAULT_BATCH_SIZE = 128  # for datasets the authors did not use


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
    schedule: Literal["multistep", "cosine", "onecycle", "constant"] = "multistep"
    milestones: list[int] | None = None
    gamma: float = Field(0.1, gt=0)
    grad_clip: float | None = Field(None, gt=0)
    amp: Literal["off", "bf16", "fp16"] = "off"
    # channels-last layout for data and network: auto = on CUDA (where it helps convolutions:
    # tensor cores), off on the CPU; it does not change results, so it is not in the run id
    channels_last: bool | Literal["auto"] = "auto"
    compile: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    eval_split: Literal["test", "val"] = "test"
    val_fraction: float = Field(0.1, gt=0, lt=1)
    split_seed: int = 0
    limit_train: int | None = Field(None, ge=1)
    limit_eval: int | None = Field(None, ge=1)
    max_steps: int | None = Field(None, ge=1)
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

    @property
    def run_id(self) -> str:
        """16 hex digits of sha256 over the canonical JSON of the result-determining fields."""
        payload = self.model_dump(mode="json", exclude=set(_NAMES_AND_RESOURCES))
        payload.update(_HASHED_AT_DEFAULT)
        for key, default in _DROPPED_AT_DEFAULT.items():
            if payload.get(key) == default:
                del payload[key]
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _authors_milestones(epochs: int) -> list[int]:
    """The epochs the authors' multistep schedule decays at, for a run of ``epochs`` epochs."""
    return sorted({max(1, round(f * epochs)) for f in AUTHORS_MILESTONE_FRACTIONS
                   if round(f * epochs) < epochs})


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
    fields["batch_size"] = batch_size or settings.batch_size or int(info.batch_size or DEFAULT_BATCH_SIZE)
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

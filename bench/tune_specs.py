"""Tune files: YAML -> pydantic -> per-loss Optuna search spaces over ordinary runs.

A tune file holds the run settings every trial shares (the suite fields of
:class:`~podbench.specs.RunSettings`), one dataset and architecture, the budget every loss gets,
and the losses to tune::

    name: my-study              # RESULTS/tune/my-study/, the Optuna study names
    dataset: fashion-mnist
    arch: small-cnn
    feat_dim: 32                # null: the dataset's latent dimension
    epochs: 3                   # per trial, the same for every loss
    n_trials: 12                # per loss, the same for every loss
    seed: 0                     # trials' training seed and the sampler's seed
    max_concurrent: 2
    early_stopping: {enabled: true, grace_period: 1, reduction_factor: 3}
    space:                      # tuned for every loss (default: lr and weight_decay)
      lr: {type: float, low: 0.005, high: 0.5, log: true}
    losses:
      softmax: {}
      pod:
        params: {centroids: simplex}          # fixed, not tuned
        space:                                # over the loss's own search space
          sc_weight: {type: float, low: 0.1, high: 3.0, log: true}   # replaced
          nac_weight: {high: 3.0}             # no type: narrows the plugin's range
          alpha: null                         # null: not tuned (the default is used)
          feat_dim: {type: categorical, choices: [16, 32, 64]}
        enqueue:                              # first trials, e.g. the authors' setting
          - {lr: 0.1, sc_weight: 1.0}

Space keys that name a run setting (``lr``, ``weight_decay``, ``feat_dim``, ``variant``, ...) tune
that setting; every other key is a hyperparameter of the loss. ``load_tune(path_or_name,
overrides)`` validates names and ranges and raises :class:`~podbench.errors.UserError` naming the
field path and the fix. The validation split is the objective: a tune file cannot select the test
set.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import optuna
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from podbench.errors import UserError
from podbench.specs import (
    RunSettings,
    RunSpec,
    apply_overrides,
    loss_hparam_names,
    read_spec_mapping,
    resolve_run,
    validation_error_to_user_error,
)

__all__ = [
    "CategoricalParam",
    "EarlyStopping",
    "FloatParam",
    "IntParam",
    "LossTune",
    "TUNABLE_RUN_FIELDS",
    "TuneSpec",
    "load_tune",
    "param_adapter",
]

# Run settings a search space may tune; every other key is a loss hyperparameter.
TUNABLE_RUN_FIELDS = frozenset(
    {
        "lr",
        "weight_decay",
        "momentum",
        "feat_dim",
        "batch_size",
        "variant",
        "optimizer",
        "schedule",
        "gamma",
        "grad_clip",
    }
)
# Passed to resolve_run as keywords rather than through RunSettings.
_RUN_KEYWORDS = frozenset({"feat_dim", "batch_size", "variant"})
_BUDGET_FIELDS = ("n_trials", "epochs")
_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class FloatParam(BaseModel):
    """A float range, optionally log-uniform or stepped."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _valid_range(self) -> FloatParam:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("log: true needs low > 0 and no step")
        return self

    def distribution(self) -> optuna.distributions.BaseDistribution:
        return optuna.distributions.FloatDistribution(
            self.low, self.high, log=self.log, step=self.step
        )


class IntParam(BaseModel):
    """An integer range, optionally log-uniform or stepped."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _valid_range(self) -> IntParam:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and (self.low <= 0 or self.step != 1):
            raise ValueError("log: true needs low > 0 and step 1")
        return self

    def distribution(self) -> optuna.distributions.BaseDistribution:
        return optuna.distributions.IntDistribution(
            self.low, self.high, log=self.log, step=self.step
        )


class CategoricalParam(BaseModel):
    """A choice among values (ablation switches: a schedule, a centroid kind, a variant...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["categorical"]
    choices: list[str | bool | int | float | None] = Field(min_length=1)

    @field_validator("choices")
    @classmethod
    def _distinct(cls, value: list[Any]) -> list[Any]:
        if len({json.dumps(v) for v in value}) != len(value):
            raise ValueError("choices must be distinct")
        return value

    def distribution(self) -> optuna.distributions.BaseDistribution:
        return optuna.distributions.CategoricalDistribution(tuple(self.choices))


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]
param_adapter: TypeAdapter[FloatParam | IntParam | CategoricalParam] = TypeAdapter(Param)

DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "lr": {"type": "float", "low": 1e-3, "high": 0.5, "log": True},
    "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
}


class EarlyStopping(BaseModel):
    """Asynchronous successive halving (ASHA) on per-epoch validation accuracy.

    After ``grace_period`` epochs, and at every ``reduction_factor`` times as many, a trial goes on
    only if its validation accuracy is in the best 1/``reduction_factor`` of the trials of its
    loss that reached the same epoch (Optuna's ``SuccessiveHalvingPruner``; the rungs live in
    the study, so they survive a resume).
    """

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    grace_period: int = Field(1, ge=1)
    reduction_factor: int = Field(3, ge=2)


class LossTune(BaseModel):
    """One loss to tune: fixed hyperparameters, a search space over its own, first points."""

    model_config = ConfigDict(extra="forbid")
    loss: str | None = None  # the registered name; None: the key in `losses`
    variant: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, dict[str, Any] | None] = Field(default_factory=dict)
    enqueue: list[dict[str, Any]] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _equal_budget(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in _BUDGET_FIELDS:
                if key in data:
                    raise ValueError(
                        f"'{key}' cannot be set per loss: every loss gets the same budget, "
                        f"so set {key} once at the top level"
                    )
        return data

    @model_validator(mode="after")
    def _params_not_tuned(self) -> LossTune:
        both = sorted(set(self.params) & {k for k, v in self.space.items() if v is not None})
        if both:
            raise ValueError(f"{both} appear in both params and space; keep one")
        return self


class TuneSpec(RunSettings):
    """A tune file (see the module docstring)."""

    name: str = Field(pattern=_NAME_PATTERN)
    description: str = ""
    dataset: str
    arch: str
    feat_dim: int | None = Field(None, ge=1)
    seed: int = Field(0, ge=0)
    n_trials: int = Field(ge=1)
    epochs: int = Field(ge=1)
    eval_split: Literal["val"] = "val"
    max_concurrent: int | None = Field(None, ge=1)
    n_startup_trials: int = Field(10, ge=0)
    early_stopping: EarlyStopping = Field(default_factory=lambda: EarlyStopping.model_validate({}))
    storage: str | None = None
    space: dict[str, dict[str, Any] | None] = Field(default_factory=dict)
    losses: dict[str, LossTune] = Field(min_length=1)

    @field_validator("eval_split", mode="before")
    @classmethod
    def _never_test(cls, value: Any) -> Any:
        if value != "val":
            raise ValueError(
                "tuning reads only the validation split; remove eval_split (it is 'val')"
            )
        return value

    @field_validator("losses", mode="before")
    @classmethod
    def _loss_shorthand(cls, value: Any) -> Any:
        if isinstance(value, list):  # `losses: [pod, softmax]`
            if not all(isinstance(v, str) for v in value):
                raise ValueError(
                    "a list of losses must hold loss names; use a mapping for settings"
                )
            return {v: {} for v in value}
        if isinstance(value, dict):
            return {k: ({} if v is None else v) for k, v in value.items()}
        return value

    @field_validator("losses")
    @classmethod
    def _labels(cls, value: dict[str, LossTune]) -> dict[str, LossTune]:
        import re

        for label in value:
            if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.\[\],=-]*$", label):
                raise ValueError(f"loss label {label!r} may hold only letters, digits and _.-[],=")
        return value

    @model_validator(mode="after")
    def _early_stop_fits(self) -> TuneSpec:
        if self.early_stopping.enabled and self.early_stopping.grace_period >= self.epochs:
            raise ValueError(
                f"early_stopping.grace_period ({self.early_stopping.grace_period}) must be below "
                f"epochs ({self.epochs}), or set early_stopping.enabled: false"
            )
        return self

    # ------------------------------------------------------------------ derived views

    def loss_name(self, label: str) -> str:
        """The registered loss behind a label."""
        return self.losses[label].loss or label

    def settings(self) -> RunSettings:
        """The run settings every trial shares, before sampled values."""
        return RunSettings.model_validate(self.model_dump(include=set(RunSettings.model_fields)))

    def space_entries(self, label: str) -> dict[str, tuple[dict[str, Any], str]]:
        """The raw search space of one loss with where each entry came from.

        Layers, each over the one before: lr and weight_decay for every loss, the plugin's own
        space, the file's ``space``, the loss's ``space``. ``null`` removes a parameter; an entry
        without ``type`` narrows the one below (only its given keys change); a parameter fixed in
        ``params`` (or a fixed ``variant``) is not tuned.
        """
        from podbench.losses import loss_info

        entry = self.losses[label]
        merged: dict[str, tuple[dict[str, Any], str]] = {
            k: (dict(v), "the default space") for k, v in DEFAULT_SPACE.items()
        }
        plugin = loss_info(self.loss_name(label)).search_space
        merged.update(
            {
                k: (dict(v), f"the search space of {self.loss_name(label)}")
                for k, v in plugin.items()
            }
        )
        for layer, prefix in ((self.space, "space"), (entry.space, f"losses.{label}.space")):
            for key, value in layer.items():
                if value is None:
                    merged.pop(key, None)
                elif "type" not in value and key in merged:
                    merged[key] = ({**merged[key][0], **value}, f"{prefix}.{key}")
                else:
                    merged[key] = (dict(value), f"{prefix}.{key}")
        for key in entry.params:
            merged.pop(key, None)
        if entry.variant is not None:
            merged.pop("variant", None)
        return dict(sorted(merged.items()))

    def loss_space(self, label: str) -> dict[str, FloatParam | IntParam | CategoricalParam]:
        """The validated search space of one loss (see :meth:`space_entries`)."""
        return {
            k: param_adapter.validate_python(raw)
            for k, (raw, _) in self.space_entries(label).items()
        }

    def distributions(self, label: str) -> dict[str, optuna.distributions.BaseDistribution]:
        """Optuna distributions of one loss's search space."""
        return {k: v.distribution() for k, v in self.loss_space(label).items()}

    def run_for(
        self,
        label: str,
        point: dict[str, Any],
        *,
        seed: int | None = None,
        eval_split: Literal["val", "test"] = "val",
        suite: str | None = None,
    ) -> RunSpec:
        """The run of one sampled point (run settings and loss hyperparameters) of a loss.

        Args:
            label: the loss's key in ``losses``.
            point: parameter name -> value (a trial's params).
            seed: training seed; None: the file's ``seed``.
            eval_split: "val" for trials; "test" only for the multi-seed rerun of the best point.
            suite: suite name of the run; None: the study name.
        """
        entry = self.losses[label]
        run_fields = {k: v for k, v in point.items() if k in TUNABLE_RUN_FIELDS}
        loss_params = {
            **entry.params,
            **{k: v for k, v in point.items() if k not in TUNABLE_RUN_FIELDS},
        }
        settings = self.settings().model_copy(
            update={
                **{k: v for k, v in run_fields.items() if k not in _RUN_KEYWORDS},
                "eval_split": eval_split,
            }
        )
        # re-validate: a sampled point may break a cross-field rule (e.g. nesterov with adamw)
        settings = RunSettings.model_validate(settings.model_dump())
        variant = run_fields.get("variant", entry.variant)
        return resolve_run(
            settings,
            suite=suite or self.name,
            loss=self.loss_name(label),
            variant=variant,
            loss_params=loss_params,
            dataset=self.dataset,
            arch=self.arch,
            feat_dim=run_fields.get("feat_dim", self.feat_dim),
            batch_size=run_fields.get("batch_size"),
            seed=self.seed if seed is None else seed,
            label=label,
        )

    def fingerprint(self, label: str) -> dict[str, Any]:
        """What a resumed study must share with the study it continues (not the trial count)."""
        dump = self.model_dump(
            mode="json",
            exclude={
                "name",
                "description",
                "n_trials",
                "max_concurrent",
                "storage",
                "losses",
                "space",
                "cpus",
                "gpus",
                "checkpoint",
                "data_root",
                "n_startup_trials",
            },
        )
        entry = self.losses[label]
        dump["loss"] = self.loss_name(label)
        dump["variant"] = entry.variant
        dump["params"] = entry.params
        dump["space"] = {k: v.model_dump(mode="json") for k, v in self.loss_space(label).items()}
        return json.loads(json.dumps(dump, sort_keys=True))

    def fingerprint_hash(self, label: str) -> str:
        text = json.dumps(self.fingerprint(label), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- loading


def _check_names(spec: TuneSpec, source: str) -> None:
    """Unknown loss, variant, hyperparameter, dataset or architecture names fail at load time."""
    from podbench.losses import list_losses, loss_info
    from podbench.tasks import list_archs, list_datasets

    if spec.dataset not in list_datasets():
        raise UserError(
            f"{source}: field 'dataset': unknown dataset '{spec.dataset}'; use one of "
            f"{', '.join(list_datasets())} (see `podbench tasks`)."
        )
    if spec.arch not in list_archs():
        raise UserError(
            f"{source}: field 'arch': unknown architecture '{spec.arch}'; use one of "
            f"{', '.join(list_archs())} (see `podbench tasks`)."
        )
    known = list_losses()
    for label, entry in spec.losses.items():
        where = f"losses.{label}"
        name = spec.loss_name(label)
        if name not in known:
            field = f"{where}.loss" if entry.loss else where
            raise UserError(
                f"{source}: field '{field}': unknown loss '{name}'; use one of "
                f"{', '.join(known)} (see `podbench losses`)."
            )
        info = loss_info(name)
        variants = sorted(info.variants)
        if entry.variant is not None and entry.variant not in info.variants:
            raise UserError(
                f"{source}: field '{where}.variant': '{name}' has no variant '{entry.variant}'; "
                f"use one of {', '.join(variants) or '(none)'} or null."
            )
        hparams = loss_hparam_names(name)
        for key in entry.params:
            if key in TUNABLE_RUN_FIELDS:
                raise UserError(
                    f"{source}: field '{where}.params.{key}': '{key}' is a run setting, not a "
                    f"hyperparameter of '{name}'; set it at the top level or tune it in space."
                )
            if hparams is not None and key not in hparams:
                raise UserError(
                    f"{source}: field '{where}.params.{key}': '{name}' has no hyperparameter "
                    f"'{key}'; use one of {', '.join(sorted(hparams)) or '(none)'}."
                )
        space: dict[str, FloatParam | IntParam | CategoricalParam] = {}
        fields: dict[str, str] = {}
        for key, (raw, origin) in spec.space_entries(label).items():
            fields[key] = origin
            try:
                space[key] = param_adapter.validate_python(raw)
            except ValidationError as err:
                first = err.errors()[0]
                msg = first["msg"].removeprefix("Value error, ")
                if first["type"] in ("union_tag_not_found", "union_tag_invalid"):
                    msg = "give type: float, int or categorical (with low/high or choices)"
                elif first["type"] == "extra_forbidden":
                    msg = f"unknown key '{first['loc'][-1]}'; use type, low, high, log, step or choices"
                elif first["type"] == "missing":
                    msg = f"'{first['loc'][-1]}' is missing; add it"
                raise UserError(f"{source}: field '{origin}': {msg} (for {label}).") from None
        for key, param in space.items():
            field = fields[key]
            if key in TUNABLE_RUN_FIELDS:
                if key == "variant":
                    bad = [
                        c
                        for c in getattr(param, "choices", [None])
                        if c is not None and c not in info.variants
                    ]
                    if not isinstance(param, CategoricalParam) or bad:
                        raise UserError(
                            f"{source}: field '{field}': a variant is tuned as a categorical of "
                            f"'{name}' variants ({', '.join(variants) or 'none'}) or null."
                        )
                continue
            if hparams is not None and key not in hparams:
                raise UserError(
                    f"{source}: field '{field}': '{name}' has no hyperparameter '{key}'; tune one "
                    f"of {', '.join(sorted(hparams))} or a run setting "
                    f"({', '.join(sorted(TUNABLE_RUN_FIELDS))}), or remove it with null."
                )
        for i, point in enumerate(entry.enqueue):
            for key, value in point.items():
                if key not in space:
                    raise UserError(
                        f"{source}: field '{where}.enqueue.{i}.{key}': not in the search space "
                        f"of '{label}' ({', '.join(space)}); remove it."
                    )
                if not _inside(space[key], value):
                    raise UserError(
                        f"{source}: field '{where}.enqueue.{i}.{key}': {value!r} lies outside "
                        f"its search space; pick a value inside it."
                    )
        # every point of the space must make a valid run: check the corners now, not in a trial
        try:
            spec.run_for(label, {k: _corner(p) for k, p in space.items()})
        except ValidationError as err:
            raise validation_error_to_user_error(
                err, f"{source} (losses.{label} with the space's lowest values)"
            ) from None


def _inside(param: FloatParam | IntParam | CategoricalParam, value: Any) -> bool:
    if isinstance(param, CategoricalParam):
        return value in param.choices
    return isinstance(value, int | float) and param.low <= value <= param.high


def _corner(param: FloatParam | IntParam | CategoricalParam) -> Any:
    return param.choices[0] if isinstance(param, CategoricalParam) else param.low


def load_tune(path_or_name: str | Path, overrides: Sequence[str] = ()) -> TuneSpec:
    """Load and fully validate a tune file (a YAML file or a built-in name) with ``--set`` overrides.

    Raises:
        UserError: one sentence naming the field path and the fix.

    Example:
        >>> spec = load_tune("tune-quickstart", ["n_trials=4"])  # doctest: +SKIP
        >>> spec.distributions("pod")
    """
    data, source = read_spec_mapping(path_or_name, kind="tune")
    data = apply_overrides(data, overrides)
    try:
        spec = TuneSpec.model_validate(data)
    except ValidationError as err:
        raise validation_error_to_user_error(err, source) from None
    _check_names(spec, source)
    return spec

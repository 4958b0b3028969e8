"""Tune files: the model, its per-loss Optuna search spaces over ordinary runs, and its loading.

A tune file holds the run settings every trial shares (the suite fields of
:class:`~podbench.runs.RunSettings`), one dataset and architecture, the budget every loss gets,
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

import json
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

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

from podbench.errors import UserError, shorten
from podbench.runs import (
    DEFAULT_MAX_RUNS,
    NON_RESULT_FIELDS,
    RunSettings,
    RunSpec,
    feat_dim_problem,
    resolve_run,
    whole_number,
)
from podbench.spec_files import NameRef, SpecFile, load_spec, validation_error_to_user_error

__all__ = [
    "CategoricalParam",
    "EarlyStopping",
    "FloatParam",
    "IntParam",
    "LossTune",
    "RUN_KEYWORDS",
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
RUN_KEYWORDS = frozenset({"feat_dim", "batch_size", "variant"})
_BUDGET_FIELDS = ("n_trials", "epochs")


class _RangeParam(BaseModel):
    """A numeric range, optionally log-uniform or stepped (one of the two)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    distribution_class: ClassVar[Callable[..., optuna.distributions.BaseDistribution]]
    low: float
    high: float
    log: bool = False
    step: float | None = None

    @model_validator(mode="after")
    def _valid_range(self) -> _RangeParam:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and (self.low <= 0 or self.step != type(self).model_fields["step"].default):
            raise ValueError("log: true needs low > 0 and no step")
        return self

    def distribution(self) -> optuna.distributions.BaseDistribution:
        return self.distribution_class(self.low, self.high, log=self.log, step=self.step)


class FloatParam(_RangeParam):
    """A float range, optionally log-uniform or stepped."""

    distribution_class = optuna.distributions.FloatDistribution
    type: Literal["float"]
    step: float | None = Field(None, gt=0)


class IntParam(_RangeParam):
    """An integer range, optionally log-uniform or stepped."""

    distribution_class = optuna.distributions.IntDistribution
    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)


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

# choices of one categorical parameter built when the file loads (the rest are left to trials)
_MAX_CHOICES_BUILT = 16

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


class TuneSpec(SpecFile):
    """A tune file (see the module docstring)."""

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

    @field_validator("feat_dim", mode="before")
    @classmethod
    def _feat_dim_number(cls, value: Any) -> Any:
        return whole_number(value)

    @field_validator("feat_dim")
    @classmethod
    def _feat_dim_buildable(cls, value: int | None) -> int | None:
        problem = None if value is None else feat_dim_problem(value)
        if problem:
            raise ValueError(problem)
        return value

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
                **{k: v for k, v in run_fields.items() if k not in RUN_KEYWORDS},
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

    def name_refs(self) -> Iterator[NameRef]:
        """The registered names this file uses (a loss before its variants and hyperparameters).

        A key of ``params`` or of the search space that names a run setting is not a name of
        the loss; :func:`load_tune` checks those keys itself.
        """
        yield NameRef("dataset", "dataset", self.dataset)
        yield NameRef("arch", "arch", self.arch)
        for label, entry in self.losses.items():
            where, name = f"losses.{label}", self.loss_name(label)
            yield NameRef(f"{where}.loss" if entry.loss else where, "loss", name)
            if entry.variant is not None:
                yield NameRef(f"{where}.variant", "variant", entry.variant, loss=name)
            for key in entry.params:
                if key not in TUNABLE_RUN_FIELDS:
                    yield NameRef(f"{where}.params.{key}", "hparam", key, loss=name)
            run_settings = ", ".join(sorted(TUNABLE_RUN_FIELDS))
            for key, (_, origin) in self.space_entries(label).items():
                if key not in TUNABLE_RUN_FIELDS:
                    yield NameRef(
                        origin,
                        "hparam",
                        key,
                        loss=name,
                        hint=f", or tune a run setting ({run_settings}), or remove it with null",
                    )
        yield from super().name_refs()

    def fingerprint(self, label: str) -> dict[str, Any]:
        """What a resumed study must share with the study it continues: what changes a trial's
        result, not the trial count, concurrency, storage, resources or where the data lives."""
        study_only = {
            "name",
            "description",
            "n_trials",
            "max_concurrent",
            "storage",
            "n_startup_trials",
            "losses",
            "space",
        }
        dump = self.model_dump(mode="json", exclude=study_only | NON_RESULT_FIELDS)
        entry = self.losses[label]
        dump["loss"] = self.loss_name(label)
        dump["variant"] = entry.variant
        dump["params"] = entry.params
        dump["space"] = {k: v.model_dump(mode="json") for k, v in self.loss_space(label).items()}
        return json.loads(json.dumps(dump, sort_keys=True))


# ---------------------------------------------------------------------------- loading


def load_tune(
    path_or_name: str | Path, overrides: Sequence[str] = (), *, max_runs: int = DEFAULT_MAX_RUNS
) -> TuneSpec:
    """Load and fully validate a tune file (a YAML file or a built-in name) with ``--set`` overrides.

    The loading pipeline of :mod:`podbench.spec_files` (``imports:`` included), then the search
    spaces: each entry a valid range, each ``enqueue`` point inside it, the space's corner a
    valid run, and the loss built (on CPU) with its fixed parameters at each end of each range and
    each choice, so that a parameter of the wrong type fails here rather than in every trial.
    ``max_runs`` bounds the trials (``n_trials`` per loss), as ``--max-runs`` does.

    Raises:
        UserError: one sentence naming the field path and the fix.

    Example:
        >>> spec = load_tune("tune-quickstart", ["n_trials=4"])
        >>> spec.distributions("pod")["lr"]
        FloatDistribution(high=0.3, log=True, low=0.003, step=None)
    """

    def check_trials(spec: TuneSpec, source: str) -> None:
        trials = spec.n_trials * len(spec.losses)
        if trials > max_runs:
            raise UserError(
                f"{source}: field 'n_trials': {spec.n_trials} trials for each of "
                f"{len(spec.losses)} loss(es) make {trials:,} runs, more than --max-runs "
                f"{max_runs}; lower n_trials, or raise --max-runs if you mean it."
            )

    spec, source = load_spec(path_or_name, TuneSpec, overrides, kind="tune", check=check_trials)
    for label in spec.losses:
        _check_space(spec, label, source)
        _check_builds(spec, label, source)
    return spec


def _check_builds(spec: TuneSpec, label: str, source: str) -> None:
    """Build the loss at the space's corner and, one parameter at a time, at the other end of each
    range and at each choice (a wrong type in ``params`` or a choice fails when the file loads)."""
    from podbench.losses import create_loss
    from podbench.tasks import dataset_info

    num_classes = dataset_info(spec.dataset).num_classes
    if num_classes is None:  # an image folder: its classes are known only when read
        return
    space = spec.loss_space(label)
    corner = {k: _corner(p) for k, p in space.items()}
    points: list[tuple[str, dict[str, Any]]] = [(f"losses.{label}", corner)]
    origins = {k: origin for k, (_, origin) in spec.space_entries(label).items()}
    for key, param in space.items():
        values = param.choices[1:] if isinstance(param, CategoricalParam) else [param.high]
        points += [(origins[key], {**corner, key: v}) for v in values[:_MAX_CHOICES_BUILT]]
    built: set[str] = set()
    for where, point in points:
        try:
            run = spec.run_for(label, point)
        except ValidationError as err:
            problem = shorten(str(err.errors()[0]["msg"]).removeprefix("Value error, "), 300)
            raise UserError(f"{source}: field '{where}' (for {label}): {problem}.") from None
        key = json.dumps([run.variant, run.loss_params, run.feat_dim], sort_keys=True, default=str)
        if key in built:
            continue
        built.add(key)
        try:
            create_loss(
                run.loss,
                num_classes=int(num_classes),
                feat_dim=run.feat_dim,
                variant=run.variant,
                **run.loss_params,
            )
        except UserError as err:
            raise UserError(
                f"{source}: field '{where}' (for {label}, feat_dim={run.feat_dim}): "
                f"{str(err).rstrip('.')}."
            ) from None


def _check_space(spec: TuneSpec, label: str, source: str) -> None:
    """The search space of one loss makes valid runs (its names are checked already)."""
    from podbench.losses import loss_info

    entry, name, where = spec.losses[label], spec.loss_name(label), f"losses.{label}"
    for key in entry.params:
        if key in TUNABLE_RUN_FIELDS:
            raise UserError(
                f"{source}: field '{where}.params.{key}': '{key}' is a run setting, not a "
                f"hyperparameter of '{name}'; set it at the top level or tune it in space."
            )
    space: dict[str, FloatParam | IntParam | CategoricalParam] = {}
    for key, (raw, origin) in spec.space_entries(label).items():
        try:
            space[key] = param_adapter.validate_python(raw)
        except ValidationError as err:
            raise UserError(
                f"{source}: field '{origin}': {_param_problem(err)} (for {label})."
            ) from None
        if key == "variant":
            variants = loss_info(name).variants
            choices = getattr(space[key], "choices", [None])
            if not isinstance(space[key], CategoricalParam) or any(
                c is not None and c not in variants for c in choices
            ):
                raise UserError(
                    f"{source}: field '{origin}': a variant is tuned as a categorical of "
                    f"'{name}' variants ({', '.join(sorted(variants)) or 'none'}) or null."
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


def _param_problem(err: ValidationError) -> str:
    """What is wrong with one search-space entry, in words."""
    first = err.errors()[0]
    if first["type"] in ("union_tag_not_found", "union_tag_invalid"):
        return "give type: float, int or categorical (with low/high or choices)"
    if first["type"] == "extra_forbidden":
        return f"unknown key '{first['loc'][-1]}'; use type, low, high, log, step or choices"
    if first["type"] == "missing":
        return f"'{first['loc'][-1]}' is missing; add it"
    return str(first["msg"]).removeprefix("Value error, ")


def _inside(param: FloatParam | IntParam | CategoricalParam, value: Any) -> bool:
    if isinstance(param, CategoricalParam):
        return value in param.choices
    return isinstance(value, int | float) and param.low <= value <= param.high


def _corner(param: FloatParam | IntParam | CategoricalParam) -> Any:
    return param.choices[0] if isinstance(param, CategoricalParam) else param.low

"""Suite and run specifications: YAML -> pydantic -> a grid of fully resolved runs.

A suite file names losses (with hyperparameters, grids and ablation variants), datasets,
architectures, latent dimensions and seeds, plus the run settings every run shares::

    name: my-suite
    losses:
      - pod
      - {name: pod, variants: [no-sc, no-nac]}
      - {name: cosface, params: {m: 0.35}, grid: {s: [16, 30]}}
    datasets: [fashion-mnist]
    archs: [small-cnn]
    feat_dim: 32            # or a list (a grid); default: the dataset's latent dimension
    seeds: 3                # or an explicit list [0, 1, 2]
    epochs: 5
    optimizer: sgd
    lr: 0.1

``load_suite(path_or_builtin_name, overrides=["epochs=1", ...])`` validates everything (loss,
variant, hyperparameter, dataset and architecture names included) and raises
:class:`~podbench.errors.UserError` naming the field path and the fix. ``SuiteSpec.expand()`` gives
the list of :class:`RunSpec`, each with a stable ``run_id``.

For the tuning room: :class:`RunSettings` holds every shared run-settings field (optimiser,
schedule, epochs, batch size, AMP, resources, limits...); build ``TuneSpec`` on it and turn one
sampled point into a run with :func:`resolve_run`. Put ``TuneSpec`` and ``load_tune`` in
``bench/tune_specs.py``; this module re-exports them lazily (``podbench.specs.TuneSpec``).
:func:`read_spec_mapping`, :func:`validation_error_to_user_error` and :func:`apply_overrides` are
the helpers to reuse for the same error messages and ``--set`` handling.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.resources
import json
from collections.abc import Iterable, Sequence
from itertools import product
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from podbench.errors import UserError

__all__ = [
    "DatasetEntry",
    "LossEntry",
    "RunSettings",
    "RunSpec",
    "SuiteSpec",
    "apply_overrides",
    "builtin_suites",
    "load_suite",
    "read_spec_mapping",
    "resolve_run",
    "validation_error_to_user_error",
]

# Fields that do not change the result of a run, hence are left out of run_id.
# `imports` only makes plugin names known; the names themselves are in the id.
NON_RESULT_FIELDS = frozenset({"suite", "label", "cpus", "gpus", "checkpoint", "imports"})
# Authors' milestones 30/60/90 of 100 epochs, scaled to the run's epoch count.
AUTHORS_MILESTONE_FRACTIONS = (0.3, 0.6, 0.9)
DEFAULT_EPOCHS = 100  # the authors' budget (LOSSES.md)
DEFAULT_BATCH_SIZE = 128  # for datasets the authors did not use


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
    channels_last: bool = False
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
    checkpoint: bool = False
    data_root: str | None = None
    image_size: int | None = Field(None, ge=1)
    imports: list[str] = Field(default_factory=list)

    @field_validator("milestones")
    @classmethod
    def _milestones_sorted(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (any(m < 1 for m in value) or value != sorted(set(value))):
            raise ValueError("milestones must be increasing epoch numbers >= 1, e.g. [30, 60, 90]")
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
        payload = self.model_dump(mode="json", exclude=set(NON_RESULT_FIELDS))
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class LossEntry(BaseModel):
    """A loss in a suite: fixed hyperparameters, a grid over some, and ablation variants."""

    model_config = ConfigDict(extra="forbid")

    name: str
    variant: str | None = None
    variants: list[str | None] | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    label: str | None = None

    @model_validator(mode="after")
    def _one_variant_field(self) -> LossEntry:
        if self.variant is not None and self.variants is not None:
            raise ValueError("give either variant: NAME or variants: [..], not both")
        if self.variants is not None and not self.variants:
            raise ValueError("variants must list at least one variant (null = the full loss)")
        overlap = set(self.params) & set(self.grid)
        if overlap:
            raise ValueError(f"{sorted(overlap)} appear in both params and grid; keep one")
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"grid.{key} must list at least one value")
        return self

    def expand(self) -> list[tuple[str | None, dict[str, Any], str]]:
        """(variant, loss_params, label) for each point of this entry's grid."""
        variants = self.variants if self.variants is not None else [self.variant]
        keys = sorted(self.grid)
        out = []
        for variant in variants:
            for values in product(*(self.grid[k] for k in keys)):
                point = dict(zip(keys, values, strict=True))
                # grid points and variants are different methods: each gets its own label
                # a custom label for one variant names that variant already
                show_variant = variant is not None and (self.variants is not None or not self.label)
                inner = [variant] if show_variant and variant is not None else []
                inner += [f"{k}={v}" for k, v in point.items()]
                base = self.label or self.name
                label = f"{base}[{','.join(inner)}]" if inner else base
                out.append((variant, {**self.params, **point}, label))
        return out


class DatasetEntry(BaseModel):
    """A dataset in a suite, optionally with its own data root and batch size."""

    model_config = ConfigDict(extra="forbid")

    name: str
    data_root: str | None = None
    batch_size: int | None = Field(None, ge=1)


def _names_to_entries(value: Any) -> Any:
    """``[pod, {name: softmax}]`` -> ``[{name: pod}, {name: softmax}]``: a bare name is an entry."""
    if isinstance(value, list):
        return [{"name": v} if isinstance(v, str) else v for v in value]
    return value


class SuiteSpec(RunSettings):
    """A suite file: a grid of runs plus the settings they share."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    losses: list[LossEntry] = Field(min_length=1)
    datasets: list[DatasetEntry] = Field(min_length=1)
    archs: list[str] = Field(min_length=1)
    feat_dim: list[int] | None = None
    seeds: list[int] = Field(default_factory=lambda: [0])

    @field_validator("losses", mode="before")
    @classmethod
    def _loss_shorthand(cls, value: Any) -> Any:
        return _names_to_entries(value)

    @field_validator("datasets", mode="before")
    @classmethod
    def _dataset_shorthand(cls, value: Any) -> Any:
        return _names_to_entries([value] if isinstance(value, str) else value)

    @field_validator("archs", mode="before")
    @classmethod
    def _arch_shorthand(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("feat_dim", mode="before")
    @classmethod
    def _feat_dim_shorthand(cls, value: Any) -> Any:
        return [value] if isinstance(value, int) else value

    @field_validator("feat_dim")
    @classmethod
    def _feat_dim_positive(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or any(d < 1 for d in value)):
            raise ValueError("feat_dim must be a positive integer or a non-empty list of them")
        return value

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_count(cls, value: Any) -> Any:
        # `seeds: 3` means seeds 0, 1, 2
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                raise ValueError("seeds must be a count >= 1 or a list of seeds")
            return list(range(value))
        return value

    @field_validator("seeds")
    @classmethod
    def _seeds_unique(cls, value: list[int]) -> list[int]:
        if not value or len(set(value)) != len(value) or any(s < 0 for s in value):
            raise ValueError("seeds must be distinct non-negative integers, e.g. [0, 1, 2]")
        return value

    def settings(self) -> RunSettings:
        """The shared run settings of this suite, without the grid."""
        return RunSettings.model_validate(self.model_dump(include=set(RunSettings.model_fields)))

    def expand(self) -> list[RunSpec]:
        """Every run of the grid, in a stable order, each fully resolved (duplicates dropped)."""
        settings = self.settings()
        runs: list[RunSpec] = []
        seen: set[str] = set()
        dims_grid: list[int | None] = list(self.feat_dim) if self.feat_dim else [None]
        for ds in self.datasets:
            for arch in self.archs:
                for dims in dims_grid:
                    for entry in self.losses:
                        for variant, params, label in entry.expand():
                            for seed in self.seeds:
                                run = resolve_run(
                                    settings,
                                    suite=self.name,
                                    loss=entry.name,
                                    variant=variant,
                                    loss_params=params,
                                    dataset=ds.name,
                                    arch=arch,
                                    feat_dim=dims,
                                    seed=seed,
                                    data_root=ds.data_root,
                                    batch_size=ds.batch_size,
                                    label=label,
                                )
                                if run.run_id not in seen:  # a grid may repeat a point
                                    seen.add(run.run_id)
                                    runs.append(run)
        return runs


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
    if settings.milestones is None:
        epochs = settings.epochs
        fields["milestones"] = sorted(
            {max(1, round(f * epochs)) for f in AUTHORS_MILESTONE_FRACTIONS if round(f * epochs) < epochs}
        )
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


# ---------------------------------------------------------------------------- loading


def builtin_suites() -> list[str]:
    """Names of the suites shipped in ``podbench.suites`` (tune files, ``tune-*``, excluded)."""
    folder = importlib.resources.files("podbench.suites")
    return sorted(
        p.name[:-5] for p in folder.iterdir()
        if p.name.endswith(".yaml") and not p.name.startswith("tune-")
    )


def read_spec_mapping(path_or_name: str | Path, *, kind: str = "suite") -> tuple[dict[str, Any], str]:
    """Read a YAML spec (a file, or a built-in name) into a mapping.

    Returns:
        (mapping, source) where source names the file for error messages.
    """
    text: str
    path = Path(path_or_name)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        if not path.is_file():
            raise UserError(
                f"{path}: no such {kind} file; give an existing YAML file or a built-in name "
                f"({', '.join(builtin_suites())})."
            )
        text, source = path.read_text(encoding="utf-8"), str(path)
    else:
        resource = importlib.resources.files("podbench.suites") / f"{path_or_name}.yaml"
        if not resource.is_file():
            raise UserError(
                f"{path_or_name!s}: not a file and not a built-in {kind}; use a YAML path or one of "
                f"{', '.join(builtin_suites())}."
            )
        text, source = resource.read_text(encoding="utf-8"), f"{path_or_name} (built-in)"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{source}{where}: not valid YAML ({err.__class__.__name__}); fix the syntax there.") from None
    if not isinstance(data, dict):
        raise UserError(f"{source}: a {kind} file must be a YAML mapping (key: value lines) at the top.")
    return data, source


def apply_overrides(data: dict[str, Any], overrides: Iterable[str], *, source: str = "--set") -> dict[str, Any]:
    """Apply ``key=value`` (dotted keys, YAML values) overrides to a spec mapping, returning a copy."""
    out = json.loads(json.dumps(data))  # deep copy of plain YAML data
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected key=value, e.g. --set epochs=2.")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise UserError(f"--set {item!r}: the value is not valid YAML; quote it or fix the brackets.") from None
        parts = key.split(".")
        node: Any = out
        for depth, part in enumerate(parts[:-1]):
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                if isinstance(node[int(part)], str):  # shorthand entry -> mapping so it can take keys
                    node[int(part)] = {"name": node[int(part)]}
                node = node[int(part)]
            elif isinstance(node, dict):
                node = node.setdefault(part, {})
            else:
                raise UserError(
                    f"--set {item!r}: '{'.'.join(parts[: depth + 1])}' is not a mapping or list index; "
                    "check the key path."
                )
        last = parts[-1]
        if isinstance(node, list) and last.isdigit() and int(last) < len(node):
            node[int(last)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise UserError(f"--set {item!r}: cannot set '{key}' there; check the key path.")
    return out


def _loc(loc: Sequence[int | str]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def validation_error_to_user_error(err: ValidationError, source: str) -> UserError:
    """One sentence naming the field path (pydantic loc) and the fix."""
    first = err.errors()[0]
    loc = [p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown field; remove it or check its spelling against the documented fields"
    elif first["type"] == "missing":
        msg = "required field is missing; add it"
    more = f" (and {err.error_count() - 1} more problem(s))" if err.error_count() > 1 else ""
    return UserError(f"{source}: field '{_loc(loc)}': {msg}{more}.")


def _check_names(spec: SuiteSpec, source: str) -> None:
    """Unknown loss, variant, hyperparameter, dataset or architecture names fail at load time."""
    import_plugins(spec.imports, source)
    from podbench.losses import list_losses, loss_info
    from podbench.tasks import list_archs, list_datasets

    known_losses = list_losses()
    for i, entry in enumerate(spec.losses):
        if entry.name not in known_losses:
            raise UserError(
                f"{source}: field 'losses.{i}.name': unknown loss '{entry.name}'; "
                f"use one of {', '.join(known_losses)} (see `podbench losses`)."
            )
        info = loss_info(entry.name)
        variants = dict(getattr(info, "variants", {}) or {})
        for variant in entry.variants or [entry.variant]:
            if variant is not None and variant not in variants:
                field = "variants" if entry.variants is not None else "variant"
                raise UserError(
                    f"{source}: field 'losses.{i}.{field}': '{entry.name}' has no variant "
                    f"'{variant}'; use one of {', '.join(sorted(variants)) or '(none)'} or null."
                )
        allowed = loss_hparam_names(entry.name)
        for field in ("params", "grid"):
            for key in getattr(entry, field):
                if key not in allowed:
                    raise UserError(
                        f"{source}: field 'losses.{i}.{field}.{key}': '{entry.name}' has no "
                        f"hyperparameter '{key}'; use one of {', '.join(sorted(allowed)) or '(none)'}."
                    )
    known_datasets = list_datasets()
    for i, ds in enumerate(spec.datasets):
        if ds.name not in known_datasets:
            raise UserError(
                f"{source}: field 'datasets.{i}.name': unknown dataset '{ds.name}'; "
                f"use one of {', '.join(known_datasets)} (see `podbench tasks`)."
            )
    known_archs = list_archs()
    for i, arch in enumerate(spec.archs):
        if arch not in known_archs:
            raise UserError(
                f"{source}: field 'archs.{i}': unknown architecture '{arch}'; "
                f"use one of {', '.join(known_archs)} (see `podbench tasks`)."
            )


def import_plugins(modules: Sequence[str], source: str = "imports") -> None:
    """Import the modules a spec lists under ``imports`` (they register their plugins)."""
    for i, module in enumerate(modules):
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise UserError(
                f"{source}: field 'imports.{i}': cannot import module '{module}' ({err}); "
                "install it or put it on PYTHONPATH."
            ) from None


def loss_hparam_names(name: str) -> set[str]:
    """Hyperparameter names a loss accepts: the keys of its registered defaults."""
    from podbench.losses import loss_info

    return set(loss_info(name).defaults)


def load_suite(
    path_or_name: str | Path, overrides: Sequence[str] = (), *, build_losses: bool = True
) -> SuiteSpec:
    """Load and fully validate a suite (a YAML file or a built-in name) with ``--set`` overrides.

    Args:
        path_or_name: a YAML file or a built-in suite name.
        overrides: ``key=value`` strings (dotted keys, YAML values), applied before validation.
        build_losses: also build each distinct loss once on CPU, so that a value the loss
            rejects (e.g. feat_dim too small for simplex centroids) fails here; PEDCC's charge
            model for hundreds of classes makes this take tens of seconds.

    Raises:
        UserError: one sentence naming the field path and the fix.

    Example:
        >>> spec = load_suite("quickstart", ["epochs=1"])  # doctest: +SKIP
        >>> runs = spec.expand()
    """
    data, source = read_spec_mapping(path_or_name)
    data = apply_overrides(data, overrides)
    try:
        spec = SuiteSpec.model_validate(data)
    except ValidationError as err:
        raise validation_error_to_user_error(err, source) from None
    _check_names(spec, source)
    try:
        runs = spec.expand()
    except ValidationError as err:  # e.g. a dataset default that breaks a constraint
        raise validation_error_to_user_error(err, source) from None
    if build_losses:
        _check_losses_build(spec, runs, source)
    return spec


def _check_losses_build(spec: SuiteSpec, runs: Sequence[RunSpec], source: str) -> None:
    """Build each distinct loss once on CPU so bad values (e.g. d too small) fail before any run."""
    from podbench.losses import create_loss
    from podbench.tasks import dataset_info

    entry_of = {entry.name: i for i, entry in enumerate(spec.losses)}
    seen: set[str] = set()
    for run in runs:
        key = json.dumps([run.loss, run.variant, run.loss_params, run.dataset, run.feat_dim],
                         sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        num_classes = dataset_info(run.dataset).num_classes
        if num_classes is None:  # an image folder: its classes are known only when read
            continue
        try:
            create_loss(run.loss, num_classes=int(num_classes),
                        feat_dim=run.feat_dim, variant=run.variant, **run.loss_params)
        except UserError as err:
            where = f"losses.{entry_of.get(run.loss, 0)}"
            raise UserError(
                f"{source}: field '{where}' ({run.label} on {run.dataset}, feat_dim={run.feat_dim}): "
                f"{str(err).rstrip('.')}."
            ) from None


def __getattr__(name: str) -> Any:
    # TuneSpec / load_tune live in the tuning room's module; re-exported here lazily (no cycle).
    if name in {"TuneSpec", "load_tune"}:
        module = importlib.import_module("podbench.tune_specs")
        return getattr(module, name)
    raise AttributeError(f"module 'podbench.specs' has no attribute {name!r}")

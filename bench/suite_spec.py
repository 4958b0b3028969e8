"""A suite file's model and its grid expansion into runs.

A suite file names losses (with hyperparameters, grids and ablation variants), datasets,
architectures, latent dimensions and seeds, plus the run settings every run shares::

    name: my-suite
    losses:
      - pod
      - {name: pod, variants: [no-sc, no-nac]}
      - {name: cosface, params: {m: 0.35}, grid: {s: [16, 30]}}
      - {name: softmax, settings: {lr: 0.05}}   # this loss's runs only (run settings)
    datasets:
      - fashion-mnist
      # a dataset's own archs / epochs / limit_train / limit_eval / lr / batch_size / image_size /
      # data_root
      - {name: digits, archs: [mlp], epochs: 30, lr: 0.02}
    archs: [small-cnn]      # the blocks: each dataset x its archs (default: these)
    feat_dim: 32            # or a list (a grid); default: the dataset's latent dimension
    seeds: 3                # or an explicit list [0, 1, 2]
    epochs: 5
    optimizer: sgd
    lr: 0.1

:func:`load_suite` reads a file through the loading pipeline of :mod:`podbench.spec_files`
(so unknown names and bad values fail with one sentence naming the field), expands it and builds
each distinct loss once; :meth:`SuiteSpec.expand` gives the list of
:class:`~podbench.runs.RunSpec`, each with a stable ``run_id``.

A method (a label) in a block is one setting, its runs differing only in the seed: each grid
point and variant has its own label (``cosface[s=16]``), a ``feat_dim`` list adds the size
(``pod[feat_dim=16]``), two loss entries may not share a label, and whatever else would still
vary within a label and block (a dataset listed twice with other epochs) is refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from itertools import product
from math import prod
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from podbench.errors import UserError, shorten
from podbench.runs import (
    DEFAULT_MAX_RUNS,
    LabelNoiseSettings,
    RunSettings,
    RunSpec,
    check_one_setting_per_method,
    feat_dim_problem,
    resolve_run,
    whole_number,
    with_tag,
)
from podbench.spec_files import NameRef, SpecFile, load_spec, validation_error_to_user_error

__all__ = ["DatasetEntry", "LossEntry", "SuiteSpec", "load_suite"]


# resources, data and probes are the suite's: a loss cannot run elsewhere or on other data
_SUITE_WIDE = frozenset(
    {
        "device",
        "cpus",
        "gpus",
        "data_root",
        "imports",
        "evaluate",
        "label_noise",
        "open_set",
        "eval_split",
        "val_fraction",
        "split_seed",
        "limit_eval",
        "checkpoint",
    }
)


class LossEntry(BaseModel):
    """A loss in a suite: fixed hyperparameters, a grid over some, and ablation variants."""

    model_config = ConfigDict(extra="forbid")

    name: str
    variant: str | None = None
    variants: list[str | None] | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    label: str | None = None
    # run settings of this loss's runs only (e.g. {lr: 0.75, proj: linear}): where a loss's
    # authors need other training settings than the suite's; they replace the suite's and the
    # dataset entry's values
    settings: dict[str, Any] = Field(default_factory=dict)

    @field_validator("settings")
    @classmethod
    def _known_run_settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - set(RunSettings.model_fields))
        if unknown:
            raise ValueError(
                f"{unknown} are not run settings; use fields such as lr, "
                "weight_decay, schedule, warmup, proj"
            )
        shared = sorted(set(value) & _SUITE_WIDE)
        if shared:
            raise ValueError(f"{shared} apply to the whole suite; set them at the top level")
        return value

    def run_settings(self, shared: RunSettings) -> RunSettings:
        """``shared`` with this loss's own settings (validated together)."""
        if not self.settings:
            return shared
        return RunSettings.model_validate({**shared.model_dump(), **self.settings})

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
    """A dataset in a suite, optionally with its own data root, batch size, architectures,
    training length, optimiser settings and image size (each replaces the suite's setting for
    this dataset's runs only)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    data_root: str | None = None
    batch_size: int | None = Field(None, ge=1)
    # datasets differ in size and difficulty: each block can be sized to plateau on its own
    archs: list[str] | None = Field(None, min_length=1)
    epochs: int | None = Field(None, ge=1)
    limit_train: int | None = Field(None, ge=1)
    limit_eval: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    # a network's own recipe in a block (fastnet's airbench settings beside the others' SGD)
    momentum: float | None = Field(None, ge=0, lt=1)
    weight_decay: float | None = Field(None, ge=0)
    nesterov: bool | None = None
    # e.g. CIFAR-10 at 16 px for a ResNet block a CPU can afford
    image_size: int | None = Field(None, ge=1)

    def settings(self, shared: RunSettings) -> RunSettings:
        """The suite's shared settings with this dataset's epochs, limits, optimiser settings
        (lr, momentum, weight decay, Nesterov) and image size."""
        keys = (
            "epochs",
            "limit_train",
            "limit_eval",
            "lr",
            "momentum",
            "weight_decay",
            "nesterov",
            "image_size",
        )
        own = {k: getattr(self, k) for k in keys if getattr(self, k) is not None}
        return shared.model_copy(update=own) if own else shared


def _names_to_entries(value: Any) -> Any:
    """``[pod, {name: softmax}]`` -> ``[{name: pod}, {name: softmax}]``: a bare name is an entry."""
    if isinstance(value, list):
        return [{"name": v} if isinstance(v, str) else v for v in value]
    return value


class SuiteSpec(SpecFile):
    """A suite file: a grid of runs plus the settings they share."""

    losses: list[LossEntry] = Field(min_length=1)
    datasets: list[DatasetEntry] = Field(min_length=1)
    archs: list[str] = Field(min_length=1)
    feat_dim: list[int] | None = None
    seeds: list[int] = Field(default_factory=lambda: [0])
    # an axis: one noise model or a list of them (null: clean labels), e.g. for accuracy vs rate
    label_noise: list[LabelNoiseSettings | None] | None = None  # type: ignore[assignment]

    @field_validator("label_noise", mode="before")
    @classmethod
    def _noise_axis(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @field_validator("label_noise")
    @classmethod
    def _noise_levels(
        cls, value: list[LabelNoiseSettings | None] | None
    ) -> list[LabelNoiseSettings | None] | None:
        if value is not None and not value:
            raise ValueError("label_noise must be a noise model or a non-empty list of them")
        return value

    def settings(self) -> RunSettings:
        """The shared run settings; the label-noise axis is set per run by :meth:`expand`."""
        fields = set(RunSettings.model_fields) - {"label_noise"}
        return RunSettings.model_validate(self.model_dump(include=fields))

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
        values = value if isinstance(value, list) else [value] if value is not None else None
        # YAML 1.1 reads `1e9` (no dot) as text: a whole number written so is still that number
        return None if values is None else [whole_number(v) for v in values]

    @field_validator("feat_dim")
    @classmethod
    def _feat_dim_positive(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and not value:
            raise ValueError("feat_dim must be a positive integer or a non-empty list of them")
        for dim in value or []:
            problem = feat_dim_problem(dim)
            if problem:
                raise ValueError(problem)
        return value

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_count(cls, value: Any, info: ValidationInfo) -> Any:
        # `seeds: 3` means seeds 0, 1, 2
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                raise ValueError("seeds must be a count >= 1 or a list of seeds")
            max_runs = (info.context or {}).get("max_runs", DEFAULT_MAX_RUNS)
            if value > max_runs:  # before the list is built: 10**12 seeds is a typo
                raise ValueError(
                    f"{value} seeds make more runs than --max-runs {max_runs}; give fewer "
                    f"seeds, or raise --max-runs if you mean it"
                )
            return list(range(value))
        return value

    @field_validator("seeds")
    @classmethod
    def _seeds_unique(cls, value: list[int]) -> list[int]:
        if not value or len(set(value)) != len(value) or any(s < 0 for s in value):
            raise ValueError("seeds must be distinct non-negative integers, e.g. [0, 1, 2]")
        return value

    def name_refs(self) -> Iterator[NameRef]:
        """The registered names this suite uses, each with its field path (a loss before its
        variants and hyperparameters)."""
        for i, entry in enumerate(self.losses):
            yield NameRef(f"losses.{i}.name", "loss", entry.name)
            field = "variants" if entry.variants is not None else "variant"
            for variant in entry.variants or [entry.variant]:
                if variant is not None:
                    yield NameRef(f"losses.{i}.{field}", "variant", variant, loss=entry.name)
            for part in ("params", "grid"):
                for key in getattr(entry, part):
                    yield NameRef(f"losses.{i}.{part}.{key}", "hparam", key, loss=entry.name)
        for i, ds in enumerate(self.datasets):
            yield NameRef(f"datasets.{i}.name", "dataset", ds.name)
            for j, arch in enumerate(ds.archs or []):
                yield NameRef(f"datasets.{i}.archs.{j}", "arch", arch)
        for i, arch in enumerate(self.archs):
            yield NameRef(f"archs.{i}", "arch", arch)
        yield from super().name_refs()

    def run_count(self) -> int:
        """How many runs :meth:`expand` makes at most (a repeated grid point counts each time),
        computed without building them."""
        points = sum(
            len(entry.variants or [entry.variant]) * prod(len(v) for v in entry.grid.values())
            for entry in self.losses
        )
        blocks = sum(len(ds.archs or self.archs) for ds in self.datasets)
        axes = len(self.label_noise or [None]) * len(self.feat_dim or [None])
        return blocks * axes * points * len(self.seeds)

    def expand(self) -> list[RunSpec]:
        """Every run of the grid, in a stable order, each fully resolved (duplicates dropped)."""
        settings = self.settings()
        runs: list[RunSpec] = []
        seen: set[str] = set()
        dims_grid: list[int | None] = list(self.feat_dim) if self.feat_dim else [None]
        noise_levels = self.label_noise or [None]
        points = (
            (ds, noise, arch, dims, entry)
            for ds in self.datasets
            for noise, arch, dims, entry in product(
                noise_levels, ds.archs or self.archs, dims_grid, self.losses
            )
        )
        for ds, noise, arch, dims, entry in points:
            for variant, params, label in entry.expand():
                if len(dims_grid) > 1:  # each latent size of a grid is a method of its own
                    label = with_tag(label, f"feat_dim={dims}")
                for seed in self.seeds:
                    run = resolve_run(
                        entry.run_settings(ds.settings(settings)),
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
                        label_noise=noise,
                    )
                    if run.run_id not in seen:  # a grid may repeat a point
                        seen.add(run.run_id)
                        runs.append(run)
        return runs


def load_suite(
    path_or_name: str | Path,
    overrides: Sequence[str] = (),
    *,
    build_losses: bool = True,
    max_runs: int = DEFAULT_MAX_RUNS,
) -> SuiteSpec:
    """Load and fully validate a suite (a YAML file or a built-in name) with ``--set`` overrides.

    Args:
        path_or_name: a YAML file or a built-in suite name.
        overrides: ``key=value`` strings (dotted keys, YAML values), applied before validation.
        build_losses: also build each distinct loss once on CPU, so that a value the loss
            rejects (e.g. feat_dim too small for simplex centroids) fails here; PEDCC's charge
            model for hundreds of classes makes this take tens of seconds.
        max_runs: the most runs the suite may make (``--max-runs``); counted before any is built.

    Raises:
        UserError: one sentence naming the field path and the fix.

    Example:
        >>> runs = load_suite("quickstart", ["epochs=1"]).expand()
        >>> len(runs), sorted({run.loss for run in runs}), {run.epochs for run in runs}
        (15, ['arcface', 'cosface', 'pedcc', 'pod', 'softmax'], {1})
    """

    def check_count(spec: SuiteSpec, source: str) -> None:
        count = spec.run_count()
        if count > max_runs:
            raise UserError(
                f"{source}: the suite expands to {count:,} runs, more than --max-runs {max_runs}; "
                "shrink seeds, grids, variants, datasets or feat_dim, or raise --max-runs if you "
                "mean it."
            )

    spec, source = load_spec(
        path_or_name,
        SuiteSpec,
        overrides,
        kind="suite",
        context={"max_runs": max_runs},
        check=check_count,
    )
    _check_labels(spec, source)
    try:
        runs = spec.expand()
    except ValidationError as err:  # e.g. a dataset default that breaks a constraint
        raise validation_error_to_user_error(err, source) from None
    check_one_setting_per_method([r.model_dump(mode="json") for r in runs], source)
    if build_losses:
        _check_losses_build(spec, runs, source)
    return spec


def _check_labels(spec: SuiteSpec, source: str) -> None:
    """Two loss entries never make the same method: each label belongs to one entry."""
    owner: dict[str, int] = {}
    for i, entry in enumerate(spec.losses):
        for full in sorted({label for _, _, label in entry.expand()}):
            j, label = owner.setdefault(full, i), shorten(full)
            if j == i:
                continue
            if entry.label:
                problem = (
                    f"field 'losses.{i}.label': '{label}' is already the method of losses.{j}; "
                    "give each loss entry its own label"
                )
            else:
                problem = (
                    f"field 'losses.{i}': loss '{entry.name}' is listed again (as losses.{j}) "
                    f"and both would be reported as the one method '{label}'; give one of them "
                    f"a label (e.g. label: {entry.name}-b), or merge them into one entry with a grid"
                )
            raise UserError(f"{source}: {problem}.")


def _check_losses_build(spec: SuiteSpec, runs: Sequence[RunSpec], source: str) -> None:
    """Build each distinct loss once on CPU so bad values (e.g. d too small) fail before any run."""
    from podbench.losses import create_loss
    from podbench.tasks import dataset_info

    entry_of = {entry.name: i for i, entry in enumerate(spec.losses)}
    seen: set[str] = set()
    for run in runs:
        key = json.dumps(
            [run.loss, run.variant, run.loss_params, run.dataset, run.feat_dim],
            sort_keys=True,
            default=str,
        )
        if key in seen:
            continue
        seen.add(key)
        num_classes = dataset_info(run.dataset).num_classes
        if num_classes is None:  # an image folder: its classes are known only when read
            continue
        try:
            create_loss(
                run.loss,
                num_classes=int(num_classes),
                feat_dim=run.feat_dim,
                variant=run.variant,
                **run.loss_params,
            )
        except UserError as err:
            where = f"losses.{entry_of.get(run.loss, 0)}"
            raise UserError(
                f"{source}: field '{where}' ({run.label} on {run.dataset}, feat_dim={run.feat_dim}): "
                f"{str(err).rstrip('.')}."
            ) from None

"""The run record: one typed, versioned document per run, and its one flattening into columns.

Every run record -- the engine's, the executor's record of a dead worker, the test fixtures' --
is a :class:`RunRecord`; ``runs/<run_id>.json`` holds its plain JSON (readable by pandas without
podbench). Torch-free and Ray-free: the report reads records through this module.

Adding a metric to the record is one field here (give it a default so older records still load);
:func:`flatten_record` turns it into table columns without further code:

- a number or string field ``x`` becomes the column ``x``;
- a mapping of named values becomes one column per name, dot-separated, at any depth:
  ``geometry.mean_cos_to_center``, ``evaluation.calibration.ece``, ``env.device``,
  ``spec.loss_params.alpha``;
- a list becomes its JSON text (``spec.milestones``); ``history`` is summarised by its last
  entry (``last_epoch.train_loss``, ``last_epoch.parts.nac``); ``error.traceback`` stays in the
  JSON only.

Schema history: 1 is the first format; 2 adds ``evaluation``, ``env.deterministic`` and makes
``cpu_time_s`` always present; 3 adds ``late_acc_gain`` and ``still_improving`` (computed from
the history of older records). Older records are migrated on load (:data:`MIGRATIONS`).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from podbench.convergence import held_out_accuracies, late_gain, rising
from podbench.errors import UserError, excerpt, shorten
from podbench.fileio import read_user_text

if TYPE_CHECKING:
    import pandas as pd

    from podbench.runs import RunSpec

__all__ = [
    "SCHEMA_VERSION",
    "STATUSES",
    "FINAL_STATUSES",
    "RunRecord",
    "RunError",
    "EpochEntry",
    "Environment",
    "GEOMETRY_KEYS",
    "flatten_record",
    "records_frame",
    "history_frame",
    "record_columns",
    "load_record",
    "parse_record",
    "package_version",
    "utc_now",
]

SCHEMA_VERSION = 4
#: Every latent-geometry statistic a run can record (podbench.geometry), in display order.
GEOMETRY_KEYS = (
    "mean_cos_to_center",
    "residual_abs_offdiag_corr",
    "mean_abs_offdiag_corr",
    "min_interclass_angle_deg",
    "mean_interclass_angle_deg",
    "mean_intraclass_angle_deg",
    "intra_inter_angle_ratio",
    "mean_feature_norm",
    "std_feature_norm",
)
STATUSES = ("completed", "diverged", "failed")
# A record with one of these statuses is final: a rerun skips it. "failed" runs are retried.
FINAL_STATUSES = frozenset({"completed", "diverged"})
# Parts of the record that are not table columns (the table summarises or leaves them out).
NOT_IN_TABLE = frozenset({"history", "error.traceback"})
LAST_EPOCH = "last_epoch"
# What identifies a run in the per-epoch table.
HISTORY_KEYS = ("run_id", "label", "dataset", "arch", "seed", "status")


def _finite_or_none(value: float | None) -> float | None:
    # JSON has no NaN/Inf: a value that diverged is recorded as null
    return value if value is not None and math.isfinite(value) else None


# Every float of the record: non-finite values become null, so records are always strict JSON.
Metric = Annotated[float | None, AfterValidator(_finite_or_none)]
Fraction = Annotated[float | None, Field(ge=0.0, le=1.0), AfterValidator(_finite_or_none)]
Status = Literal["completed", "diverged", "failed"]


class RunError(BaseModel):
    """Why a run did not complete."""

    model_config = ConfigDict(extra="forbid")

    type: str
    message: str
    traceback: str | None = None
    epoch: int | None = None  # the epoch that was running (None: before training or unknown)


class EpochEntry(BaseModel):
    """One epoch of the history; further per-epoch values may be added as extra keys."""

    model_config = ConfigDict(extra="allow")

    epoch: int
    train_loss: Metric = None
    parts: dict[str, Metric] = Field(default_factory=dict)  # the loss's named terms
    train_acc: Fraction = None
    test_acc: Fraction = None
    val_acc: Fraction = None
    lr: Metric = None
    seconds: Metric = None


class Environment(BaseModel):
    """Where and with what a run ran; further keys are kept as they are."""

    model_config = ConfigDict(extra="allow")

    podbench: str | None = None
    torch: str | None = None
    python: str | None = None
    device: str | None = None  # the device actually used: "cpu" or "cuda:<name>"
    git_commit: str | None = None
    hostname: str | None = None
    ray: str | None = None
    threads: int | None = None  # torch threads of the run
    interop_threads: int | None = None  # torch's inter-op threads
    deterministic: bool | None = None  # torch's deterministic algorithms were on during the run
    # with deterministic on: the ops that had no deterministic kernel (torch warned), [] for none
    nondeterministic_ops: list[str] | None = None
    tf32: bool | None = None  # TF32 was allowed for float32 matmuls and convolutions (CUDA)
    channels_last: bool | None = None  # data and network ran in the channels-last layout
    # channels_last: auto on the CPU: the probe's CPU seconds per training step in each layout
    # ({contiguous_s, channels_last_s, batch}); None when the layout was set or not probed
    channels_last_probe: dict[str, float | int | None] | None = None
    gpu_ids: list[str] | None = None  # under Ray: the ids of the GPUs Ray gave the run
    ray_node: str | None = None  # under Ray: the id of the node the run ran on


def _from_schema_1(data: dict[str, Any]) -> dict[str, Any]:
    # Schema 1 lacked `evaluation` and the executor's records lacked `cpu_time_s`.
    data.setdefault("cpu_time_s", None)
    data.setdefault("evaluation", {})
    return data


# MIGRATIONS[n] turns a schema-n record into a schema-(n+1) record. A schema without an entry
# needs none: what the next one added has a default (schema 3 lacked num_classes: unknown, None)
# or is computed on load (schema 2 lacked the convergence fields: from the history).
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
    1: _from_schema_1,
}


class RunRecord(BaseModel):
    """One run's record (``runs/<run_id>.json``); accuracies are fractions in [0, 1]."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_version: int = Field(SCHEMA_VERSION, alias="schema")
    run_id: str
    suite: str | None
    label: str  # the compared method: the loss name, or "loss[variant]"
    loss: str
    variant: str | None = None
    dataset: str
    arch: str
    feat_dim: int
    num_classes: int | None = Field(None, ge=1)  # K classified (chance is 1/K); None: unknown
    seed: int
    spec: dict[str, Any]  # the full RunSpec as JSON
    status: Status
    error: RunError | None = None  # set when status is not "completed"
    history: list[EpochEntry] = Field(default_factory=list)
    final_test_acc: Fraction = None
    best_test_acc: Fraction = None
    epochs_completed: int = 0
    # Held-out accuracy rise over the last 10 % of the epochs (at least the last one), and
    # whether it exceeds one point: the run had not plateaued (podbench.convergence). Filled
    # from the history when a record does not give them; None when the history cannot tell.
    late_acc_gain: Metric = None
    still_improving: bool | None = None
    wall_time_s: Metric = None
    cpu_time_s: Metric = None  # this process's CPU time, all threads
    images_per_s: Metric = None
    geometry: dict[str, Metric] | None = None  # latent-geometry statistics by name
    evaluation: dict[str, dict[str, Metric]] = Field(default_factory=dict)  # {probe: {metric: v}}
    env: Environment | None = None
    started_at: str | None = None
    finished_at: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _migrate(cls, data: Any) -> Any:
        """Bring an older record up to :data:`SCHEMA_VERSION`."""
        if not isinstance(data, dict):
            return data
        version = data.get("schema", 1)  # the first records were all schema 1
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            return data  # left to the field's own check
        data = dict(data)
        for older in range(version, SCHEMA_VERSION):
            data = MIGRATIONS.get(older, dict)(data)
        data["schema"] = max(version, SCHEMA_VERSION)  # a newer one is left to the field's check
        return data

    @model_validator(mode="after")
    def _convergence(self) -> RunRecord:
        if self.late_acc_gain is None and self.still_improving is None and self.history:
            history = [entry.model_dump() for entry in self.history]
            self.late_acc_gain = late_gain(held_out_accuracies(history))
            self.still_improving = rising(self.late_acc_gain)
        return self

    @field_validator("schema_version")
    @classmethod
    def _current(cls, version: int) -> int:
        if version != SCHEMA_VERSION:
            raise ValueError(f"this podbench reads run-record schemas 1 to {SCHEMA_VERSION}")
        return version

    @classmethod
    def of_run(cls, run: RunSpec, **fields: Any) -> RunRecord:
        """The record of ``run``: its identity from the spec, the outcome from ``fields``."""
        return cls(
            run_id=run.run_id,
            suite=run.suite,
            label=run.label,
            loss=run.loss,
            variant=run.variant,
            dataset=run.dataset,
            arch=run.arch,
            feat_dim=run.feat_dim,
            seed=run.seed,
            spec=run.model_dump(mode="json"),
            **fields,
        )

    def to_json_dict(self) -> dict[str, Any]:
        """The record as plain JSON values, keys as in the file."""
        return self.model_dump(mode="json", by_alias=True)

    def to_json_text(self) -> str:
        """The file content of the record (strict JSON, no NaN)."""
        return json.dumps(self.to_json_dict(), indent=2, allow_nan=False) + "\n"


def _sentence(err: ValidationError, source: str) -> str:
    """One sentence for the first problem of an invalid record (missing fields all at once)."""
    problems = err.errors()
    missing = [".".join(map(str, p["loc"])) for p in problems if p["type"] == "missing"]
    others = [p for p in problems if p["type"] != "missing"]
    if others:
        first = others[0]
        field = ".".join(map(str, first["loc"])) or "record"
        return (
            f"{source}: the field {shorten(field)} is invalid ({shorten(first['msg'], 300)}, "
            f"got {excerpt(first['input'])}); "
            "fix that field or delete the file and rerun that run."
        )
    return f"{source} lacks the field(s) {', '.join(missing)}; rerun that run."


def parse_record(data: Any, source: str | Path = "run record") -> RunRecord:
    """Validate (and migrate) a record read as JSON, or raise one :class:`UserError` sentence."""
    if isinstance(data, RunRecord):
        return data
    if not isinstance(data, Mapping):
        raise UserError(f"{source} does not hold a run record (a JSON object); delete it or rerun.")
    version = data.get("schema", 1)
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise UserError(
            f"{source} is a schema-{version} run record from a newer podbench, and this one reads "
            f"schemas 1 to {SCHEMA_VERSION}: upgrade podbench (pip install -U podbench) to read it."
        )
    try:
        return RunRecord.model_validate(dict(data))
    except ValidationError as err:
        raise UserError(_sentence(err, str(source))) from None


def load_record(path: str | Path) -> RunRecord:
    """Read ``runs/<run_id>.json``; any unreadable, invalid or foreign file is one sentence."""
    text = read_user_text(path, "run record")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(
            f"{path} is not valid JSON ({err.msg} at line {err.lineno}); delete it and rerun that run."
        ) from None
    return parse_record(data, path)


def _flatten_into(row: dict[str, Any], prefix: str, value: Any) -> None:
    column = prefix.rstrip(".")
    if column in NOT_IN_TABLE or (value is None and column in _GROUPS):
        return  # an absent group (no error, no geometry) has no columns of its own
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten_into(row, f"{prefix}{key}.", item)
    elif isinstance(value, (list, tuple)):
        row[column] = json.dumps(value)  # a list stays one cell, as JSON text
    else:
        row[column] = value


def flatten_record(record: RunRecord | Mapping[str, Any]) -> dict[str, Any]:
    """One table row of a record: nested mappings become dot-separated columns.

    The last history entry is kept as ``last_epoch.<key>``; ``history`` itself and the
    traceback are left out. Used for results.csv and the report's runs table alike.
    """
    data = parse_record(record).to_json_dict()
    row: dict[str, Any] = {}
    _flatten_into(row, "", data)
    if data["history"]:
        _flatten_into(row, f"{LAST_EPOCH}.", data["history"][-1])
    return row


def _options(annotation: Any) -> tuple[Any, ...]:
    """``X`` and ``X | None`` alike: the types a field may hold."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel class of a field annotated ``Model`` or ``Model | None``."""
    for option in _options(annotation):
        if isinstance(option, type) and issubclass(option, BaseModel):
            return option
    return None


def _is_mapping(annotation: Any) -> bool:
    return any(typing.get_origin(option) is dict for option in _options(annotation))


def _columns(model: type[BaseModel], prefix: str = "") -> dict[str, bool]:
    """Declared columns of ``model``, flattened, each with whether it holds numbers."""
    columns: dict[str, bool] = {}
    for name, info in model.model_fields.items():
        column = f"{prefix}{info.alias or name}"
        nested = _model_in(info.annotation)
        if column in NOT_IN_TABLE:
            continue
        if nested is not None:
            columns.update(_columns(nested, f"{column}."))
        elif not _is_mapping(info.annotation):  # a mapping's columns are its keys, per record
            columns[column] = any(t in (int, float) for t in _options(info.annotation))
    return columns


def record_columns() -> list[str]:
    """The columns every table of records has: the declared fields, flattened, in order."""
    return list(_NUMERIC)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _frame(rows: list[dict[str, Any]], declared: dict[str, bool], order: list[str]) -> pd.DataFrame:
    """Rows as a frame with every ``declared`` column, ordered by their first name in ``order``.

    Declared number columns are numeric, declared text columns hold None where empty, and any
    other column (a mapping's, known per record) is numeric when it holds numbers only.
    """
    import pandas as pd

    seen: dict[str, None] = dict.fromkeys(declared)
    for row in rows:
        seen.update(dict.fromkeys(row))
    position = {name: i for i, name in enumerate(order)}
    columns = sorted(seen, key=lambda c: position.get(c.split(".", 1)[0], len(order)))
    frame = pd.DataFrame(rows, columns=columns)
    for column in frame.columns:
        values = frame[column].dropna()
        kind = declared.get(column)
        if kind or (kind is None and all(_is_number(v) for v in values)):
            frame[column] = pd.to_numeric(frame[column])  # None -> NaN
        elif kind is False and frame[column].isna().any():
            frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    return frame


def records_frame(records: Iterable[RunRecord | Mapping[str, Any]]) -> pd.DataFrame:
    """One row per record (:func:`flatten_record`); the declared columns are always there.

    Columns follow the record's field order (a mapping's columns where the mapping is), then
    ``last_epoch.*``: the columns of results.csv and of the report's runs table.
    """
    rows = [flatten_record(r) for r in records]
    fields = [info.alias or name for name, info in RunRecord.model_fields.items()]
    return _frame(rows, _NUMERIC, [*fields, LAST_EPOCH])


def history_frame(
    records: Iterable[RunRecord | Mapping[str, Any]], keys: Iterable[str] = HISTORY_KEYS
) -> pd.DataFrame:
    """One row per (run, epoch): the run's ``keys`` and the epoch's entry, flattened as
    :func:`flatten_record` does (``parts.nac``); the declared entry columns are always there."""
    keys = list(keys)
    rows = []
    for record in records:
        data = parse_record(record).to_json_dict()
        for entry in data["history"]:
            row = {key: data[key] for key in keys}
            _flatten_into(row, "", entry)
            rows.append(row)
    declared = {key: _COLUMNS[key] for key in keys} | _columns(EpochEntry)
    return _frame(rows, declared, [*keys, *EpochEntry.model_fields])


# Fields whose columns come from their content: nested models and mappings.
_GROUPS = frozenset(
    info.alias or name
    for name, info in RunRecord.model_fields.items()
    if _model_in(info.annotation) is not None or _is_mapping(info.annotation)
)
_COLUMNS = _columns(RunRecord)
# Every table has each geometry statistic's column, even where no run measured it.
_NUMERIC = (
    _COLUMNS
    | _columns(EpochEntry, f"{LAST_EPOCH}.")
    | {f"geometry.{key}": True for key in GEOMETRY_KEYS}
)


def package_version(dist: str) -> str | None:
    """The installed version of a distribution, or None (the record's env, report provenance)."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def utc_now() -> str:
    """The current time as the record writes it (ISO 8601, UTC, seconds)."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")

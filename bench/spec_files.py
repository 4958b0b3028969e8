"""Reading suite and tune files: one loading pipeline, one name check, one kind of error.

:func:`load_spec` takes a file (or a built-in name) to a checked spec model in these steps, the
same for suite files (:func:`podbench.suite_spec.load_suite`) and tune files
(:func:`podbench.tuning.load_tune`):

1. read the file as UTF-8 text (:func:`~podbench.fileio.read_user_text`: a folder, a binary file,
   another encoding or a file without read permission is one sentence);
2. parse the YAML into a mapping (:func:`parse_yaml`: a key given twice, or aliases expanding
   beyond :data:`MAX_YAML_VALUES` values, is refused on the node tree, before values are built);
3. apply the ``--set key=value`` overrides;
4. import the modules listed under ``imports:``, so that the plugins they register are known;
5. validate the pydantic model (:class:`SpecFile` subclasses), then the caller's cheap checks
   (the number of runs against ``--max-runs``);
6. look every loss, variant, hyperparameter, dataset and architecture name up in the registries
   (:func:`check_names` over the model's ``name_refs()``).

Every mistake becomes a :class:`~podbench.errors.UserError` of one sentence naming the file, the
field path and the fix.
"""

from __future__ import annotations

import importlib
import importlib.resources
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import Field, ValidationError

from podbench.errors import UserError, excerpt, shorten
from podbench.fileio import read_user_text
from podbench.registry import Registry
from podbench.runs import RunSettings

__all__ = [
    "NameRef",
    "SpecFile",
    "apply_overrides",
    "builtin_suites",
    "builtin_tune_files",
    "check_names",
    "import_plugins",
    "load_spec",
    "parse_yaml",
    "read_spec_mapping",
    "validation_error_to_user_error",
]

# suite and study names become folder names
SPEC_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
_TUNE_PREFIX = "tune-"  # built-in tune files are named tune-*.yaml
# values a spec file may hold once YAML aliases are expanded (a large suite holds a few hundred)
MAX_YAML_VALUES = 100_000


# ---------------------------------------------------------------------------- the models' base


@dataclass(frozen=True)
class NameRef:
    """A registered name used in a spec file.

    Args:
        field: the dotted field path that holds the name, e.g. ``losses.0.variant``.
        kind: what the name is; a ``variant`` or ``hparam`` belongs to ``loss``.
        name: the name as written.
        loss: the registered loss of a variant or hyperparameter (checked before them).
        hint: words added to the list of valid names, e.g. other kinds of key allowed there.
    """

    field: str
    kind: Literal["loss", "variant", "hparam", "dataset", "arch", "probe"]
    name: str
    loss: str | None = None
    hint: str = ""


class SpecFile(RunSettings):
    """What suite and tune files share: a name, a description and the run settings."""

    name: str = Field(pattern=SPEC_NAME_PATTERN)
    description: str = ""

    def settings(self) -> RunSettings:
        """The run settings every run of this file shares, without the grid or search space."""
        return RunSettings.model_validate(self.model_dump(include=set(RunSettings.model_fields)))

    def name_refs(self) -> Iterator[NameRef]:
        """The registered names this file uses, a loss before its variants and hyperparameters.

        Here: the probes under ``evaluate`` and the datasets their settings name; a subclass
        yields its own names, then these.
        """
        for i, entry in enumerate(self.evaluate):
            yield NameRef(f"evaluate.{i}.name", "probe", entry.name)
            for j, dataset in enumerate(entry.probe_settings().get("datasets") or []):
                yield NameRef(f"evaluate.{i}.datasets.{j}", "dataset", str(dataset))


SpecT = TypeVar("SpecT", bound=SpecFile)


# ---------------------------------------------------------------------------- the pipeline


def load_spec(
    path_or_name: str | Path,
    model: type[SpecT],
    overrides: Sequence[str] = (),
    *,
    kind: str,
    context: dict[str, Any] | None = None,
    check: Callable[[SpecT, str], None] | None = None,
) -> tuple[SpecT, str]:
    """Read, override, import, validate and name-check a spec file (see the module docstring).

    Args:
        path_or_name: a YAML file or the name of a built-in one.
        model: the spec model, e.g. ``SuiteSpec``.
        overrides: ``key=value`` strings (dotted keys, YAML values).
        kind: ``"suite"`` or ``"tune"``, for messages and the built-in names.
        context: pydantic's validation context for the model (e.g. ``{"max_runs": N}``).
        check: called with (spec, source) once the model is valid, before the registries are
            loaded: cheap checks that must answer at once (e.g. the number of runs).

    Returns:
        (spec, source) where source names the file for further messages.
    """
    data, source = read_spec_mapping(path_or_name, kind=kind)
    data = apply_overrides(data, overrides)
    imports = data.get("imports")
    # a malformed list is left to the model, which names the field
    if isinstance(imports, list) and all(isinstance(m, str) for m in imports):
        import_plugins(imports, source)
    try:
        spec = model.model_validate(data, context=context)
    except ValidationError as err:
        raise validation_error_to_user_error(err, source) from None
    if check is not None:
        check(spec, source)
    check_names(spec.name_refs(), source)
    check_probe_settings(spec, source)
    return spec, source


def check_probe_settings(settings: RunSettings, source: str) -> None:
    """Validate each ``evaluate`` entry's settings against its probe (one sentence per mistake)."""
    if not settings.evaluate:
        return
    from podbench.probes import create_probe

    for i, entry in enumerate(settings.evaluate):
        try:
            probe = create_probe(entry.name, entry.probe_settings(), where=f"evaluate.{i}")
            probe.check_run(settings, where=f"evaluate.{i}")
        except UserError as err:
            raise UserError(f"{source}: field {err}") from None


def _builtin(kind: str) -> list[str]:
    folder = importlib.resources.files("podbench.suites")
    names = (p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))
    return sorted(n for n in names if n.startswith(_TUNE_PREFIX) == (kind == "tune"))


def builtin_suites() -> list[str]:
    """Names of the suites shipped in ``podbench.suites`` (tune files, ``tune-*``, excluded)."""
    return _builtin("suite")


def builtin_tune_files() -> list[str]:
    """Names of the tune files shipped in ``podbench.suites`` (``tune-*``)."""
    return _builtin("tune")


def _present(path: Path) -> bool:
    """Whether something is at ``path``; what we may not look at counts (reading it says why)."""
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return True


def read_spec_mapping(
    path_or_name: str | Path, *, kind: str = "suite"
) -> tuple[dict[str, Any], str]:
    """Read a YAML spec (a file, or a built-in name) into a mapping.

    Returns:
        (mapping, source) where source names the file for error messages.
    """
    path = Path(path_or_name)
    if _present(path):
        text, source = read_user_text(path, f"{kind} file"), str(path)
    elif path.suffix in {".yaml", ".yml"}:
        raise UserError(
            f"{path}: no such {kind} file; give an existing YAML file or a built-in name "
            f"({', '.join(_builtin(kind))})."
        )
    else:
        resource = importlib.resources.files("podbench.suites") / f"{path_or_name}.yaml"
        if not resource.is_file():
            raise UserError(
                f"{path_or_name!s}: not a file and not a built-in {kind}; use a YAML path or one of "
                f"{', '.join(_builtin(kind))}."
            )
        text, source = resource.read_text(encoding="utf-8"), f"{path_or_name} (built-in)"
    data = parse_yaml(text, source)
    if not isinstance(data, dict):
        raise UserError(
            f"{source}: a {kind} file must be a YAML mapping (key: value lines) at the top."
        )
    return data, source


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text like ``yaml.safe_load``, refusing what it would misread or choke on.

    A key given twice in one mapping (YAML keeps the last silently) and anchors and aliases that
    expand to more than :data:`MAX_YAML_VALUES` values (a "billion laughs" file) are one
    sentence each, found on the parsed node tree before any value is built.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_yaml_tree(node, source)
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(
            f"{source}{where}: not valid YAML ({err.__class__.__name__}); fix the syntax there."
        ) from None
    finally:
        loader.dispose()


def _check_yaml_tree(root: yaml.Node, source: str) -> None:
    """Count the values with aliases expanded (stopping at the bound) and find repeated keys."""
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    seen: set[int] = set()  # mappings whose keys were checked (an alias repeats a mapping)
    count = 0
    while stack:
        node, path = stack.pop()
        count += 1
        if count > MAX_YAML_VALUES:
            raise UserError(
                f"{source}: the YAML expands to more than {MAX_YAML_VALUES} values through its "
                "anchors and aliases (&name / *name); write the values out instead of nesting "
                "aliases."
            )
        if isinstance(node, yaml.SequenceNode):
            stack.extend((child, f"{path}{i}.") for i, child in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            if id(node) not in seen:
                seen.add(id(node))
                _check_repeated_keys(node, path, source)
            stack.extend((value, f"{path}{shorten(key.value, 40)}.") for key, value in node.value)


def _check_repeated_keys(node: yaml.MappingNode, path: str, source: str) -> None:
    first_line: dict[tuple[str, str], int] = {}
    position = 0
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.value == "<<":  # merge keys may repeat
            continue
        position += 1
        line = key.start_mark.line + 1
        earlier = first_line.setdefault((key.tag, key.value), line)
        if len(first_line) < position:  # this key was there before
            field = f"{path}{shorten(key.value, 40)}"
            lines = f"lines {earlier} and {line}" if earlier != line else f"both on line {line}"
            raise UserError(
                f"{source} line {line}: field '{field}' is given twice ({lines}) and YAML "
                "would silently keep the last; keep one of them."
            )


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``key=value`` (dotted keys, YAML values) overrides to a spec mapping, returning a copy."""
    out = json.loads(json.dumps(data))  # deep copy of plain YAML data
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        shown = excerpt(item)
        if not sep or not key:
            raise UserError(f"--set {shown}: expected key=value, e.g. --set epochs=2.")
        try:
            value = parse_yaml(raw, f"--set {shown}") if raw.strip() else None
        except UserError as err:
            if "not valid YAML" not in str(err):
                raise
            raise UserError(
                f"--set {shown}: the value is not valid YAML; quote it or fix the brackets."
            ) from None
        parts = key.split(".")
        node: Any = out
        for depth, part in enumerate(parts[:-1]):
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                if isinstance(
                    node[int(part)], str
                ):  # shorthand entry -> mapping so it can take keys
                    node[int(part)] = {"name": node[int(part)]}
                node = node[int(part)]
            elif isinstance(node, dict):
                node = node.setdefault(part, {})
            else:
                raise UserError(
                    f"--set {shown}: '{'.'.join(parts[: depth + 1])}' is not a mapping or list index; "
                    "check the key path."
                )
        last = parts[-1]
        if isinstance(node, list) and last.isdigit() and int(last) < len(node):
            node[int(last)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise UserError(f"--set {shown}: cannot set '{key}' there; check the key path.")
    return out


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
    where = ".".join(shorten(str(p), 40) for p in loc) or "(top level)"
    return UserError(f"{source}: field '{where}': {shorten(msg, 300)}{more}.")


# ---------------------------------------------------------------------------- the name check

# kind -> (what it is called in a message, the command that lists them)
_REGISTERED: dict[str, tuple[str, str]] = {
    "loss": ("loss", "podbench losses"),
    "dataset": ("dataset", "podbench tasks"),
    "arch": ("architecture", "podbench tasks"),
    "probe": ("probe", "podbench probes"),
}


def _registries() -> dict[str, Registry[Any]]:
    from podbench.losses import LOSSES
    from podbench.probes import PROBES
    from podbench.tasks import ARCHS, DATASETS

    return {"loss": LOSSES, "dataset": DATASETS, "arch": ARCHS, "probe": PROBES}


def _library_name(registry: Registry[Any], name: str, where: str) -> bool:
    """True when ``name`` is another library's name (``pml:ArcFaceLoss``, ``timm:resnet18``).

    The registry resolves it, or raises the sentence saying why not (no such name, or the
    library to install), which becomes the field's error.
    """
    if ":" not in name:
        return False
    try:
        registry.get(name)
    except UserError as err:
        raise UserError(f"{where}: {str(err).rstrip('.')}.") from None
    return True


def check_names(refs: Iterable[NameRef], source: str) -> None:
    """Raise a UserError for the first name in ``refs`` that is not registered.

    ``refs`` is consumed in order and may be lazy: a loss's variants and hyperparameters come
    after the loss, so they are looked up only once the loss is known.
    """
    from podbench.losses import loss_info

    registries = _registries()
    for ref in refs:
        where = f"{source}: field '{ref.field}'"
        if ref.kind in _REGISTERED:
            registry = registries[ref.kind]
            # names and aliases (e.g. am-softmax) are both valid, and other libraries' names
            if ref.name not in registry and not _library_name(registry, ref.name, where):
                what, command = _REGISTERED[ref.kind]
                close = registry.closest(ref.name)
                mean = f" (did you mean '{close}'?)" if close else ""
                raise UserError(
                    f"{where}: unknown {what} '{ref.name}'{mean}; use one of "
                    f"{', '.join(registry.names())}{ref.hint} (see `{command}`)."
                )
            continue
        info = loss_info(str(ref.loss))
        if ref.kind == "variant" and ref.name not in info.variants:
            raise UserError(
                f"{where}: '{ref.loss}' has no variant '{ref.name}'; use one of "
                f"{', '.join(sorted(info.variants)) or '(none)'}{ref.hint} or null."
            )
        if ref.kind == "hparam" and ref.name not in info.defaults:
            raise UserError(
                f"{where}: '{ref.loss}' has no hyperparameter '{ref.name}'; use one of "
                f"{', '.join(sorted(info.defaults)) or '(none)'}{ref.hint}."
            )

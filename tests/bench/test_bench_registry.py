"""The one generic registry: names, duplicates, hints, and entry points of every kind."""

from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from podbench.errors import UserError
from podbench.losses import LOSSES, create_loss, list_losses, loss_info
from podbench.registry import Registry, check_name, closest_name
from podbench.tasks import (
    ARCHS,
    DATASETS,
    arch_info,
    create_arch,
    dataset_info,
    list_archs,
    list_datasets,
    load_task,
)


@dataclass(frozen=True)
class ProbeInfo:
    """A fourth kind, declared in the test the way issue #12's probes will be."""

    name: str
    description: str = ""
    aliases: tuple[str, ...] = ()
    source: str = "podbench"


def _probes(group: str | None = None) -> Registry[ProbeInfo]:
    return Registry("probe", plural="probes", group=group, decorator="register_probe")


class LinearProbe:
    pass


class KnnProbe:
    pass


def test_registry_adds_lists_and_resolves_aliases() -> None:
    probes = _probes()
    stored = probes.add(ProbeInfo("linear-probe", aliases=("lin",)), owner=LinearProbe)
    probes.add(ProbeInfo("knn-probe"), owner=KnnProbe)
    assert probes.names() == ["knn-probe", "linear-probe"]  # sorted, no aliases
    assert probes.names("lin*") == ["linear-probe"]
    assert probes.get("lin") is probes.get("linear-probe") is stored
    assert probes.owner("lin") is LinearProbe and probes.canonical("lin") == "linear-probe"
    assert "lin" in probes and "nope" not in probes and 3 not in probes
    # defined outside podbench and not by an entry point: the module is the source
    assert stored.source == __name__


def test_registry_refuses_a_name_or_alias_another_definition_holds() -> None:
    probes = _probes()
    probes.add(ProbeInfo("linear-probe", aliases=("lin",)), owner=LinearProbe)
    for clash in (ProbeInfo("linear-probe"), ProbeInfo("knn-probe", aliases=("lin",))):
        with pytest.raises(UserError) as err:
            probes.add(clash, owner=KnnProbe)
        message = str(err.value)
        assert "is already registered by" in message and "LinearProbe" in message
        assert message.endswith(".") and message.count(". ") == 0  # one sentence
    assert probes.names() == ["linear-probe"]  # nothing half-registered
    with pytest.raises(UserError, match="twice"):
        probes.add(ProbeInfo("knn-probe", aliases=("knn-probe",)), owner=KnnProbe)


def test_registry_same_definition_registering_again_replaces_its_entry() -> None:
    # a module imported twice (pytest's importlib mode, reloads) registers the same class again
    probes = _probes()
    probes.add(ProbeInfo("linear-probe", aliases=("lin",)), owner=LinearProbe)
    probes.add(ProbeInfo("linear-probe", description="new", aliases=("lp",)), owner=LinearProbe)
    assert probes.get("linear-probe").description == "new"
    assert "lp" in probes and "lin" not in probes
    # a second name for the same definition is a second entry, not a replacement
    probes.add(ProbeInfo("plain-probe"), owner=LinearProbe)
    assert probes.names() == ["linear-probe", "plain-probe"]


@pytest.mark.parametrize("bad", ["Linear-Probe", "linear_probe", "linear--probe", "-x", "", "a b"])
def test_registry_names_are_kebab_case(bad: str) -> None:
    with pytest.raises(UserError, match="kebab-case"):
        _probes().add(ProbeInfo(bad), owner=LinearProbe)
    with pytest.raises(UserError, match="kebab-case"):
        _probes().add(ProbeInfo("ok", aliases=(bad,)), owner=LinearProbe)


def test_check_name_suggests_the_kebab_form() -> None:
    assert check_name("probe", "resnet-18") == "resnet-18"
    with pytest.raises(UserError, match="e.g. 'mobilenet-v2'"):
        check_name("architecture", "MobileNet_V2")


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("mobilenet_v2", "mobilenet-v2"),  # the old snake_case spelling, whatever difflib thinks
        ("Fashion_MNIST", "fashion-mnist"),
        ("resnet-50", "resnet50"),
        ("arcfce", "arcface"),
        ("zzzzzz", None),
    ],
)
def test_closest_name(typed: str, expected: str | None) -> None:
    names = ["mobilenet-v2", "mobilenet-v3", "fashion-mnist", "mnist", "resnet50", "arcface"]
    assert closest_name(typed, names) == expected


def test_registry_unknown_name_is_one_sentence_with_the_closest_name() -> None:
    probes = _probes()
    probes.add(ProbeInfo("linear-probe"), owner=LinearProbe)
    probes.add(ProbeInfo("knn-probe"), owner=KnnProbe)
    with pytest.raises(UserError) as err:
        probes.get("linear_probe")
    assert str(err.value) == (
        "unknown probe 'linear_probe' (did you mean 'linear-probe'?); "
        "registered probes are: knn-probe, linear-probe."
    )
    with pytest.raises(UserError) as err:
        probes.owner("qqqqqq")
    assert "did you mean" not in str(err.value) and "knn-probe, linear-probe" in str(err.value)
    with pytest.raises(UserError, match="must be a string"):
        probes.get(None)  # type: ignore[arg-type]


def test_registry_scratch_undoes_registrations() -> None:
    probes = _probes()
    probes.add(ProbeInfo("linear-probe"), owner=LinearProbe)
    with probes.scratch():
        probes.add(ProbeInfo("knn-probe"), owner=KnnProbe)
        assert probes.names() == ["knn-probe", "linear-probe"]
    assert probes.names() == ["linear-probe"]


def test_registry_imports_its_builtin_modules_on_first_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "probe_kind_builtins.py").write_text(
        textwrap.dedent("""
        from podbench.registry import Registry
        from test_probe_info import ProbeInfo
        PROBES = Registry("probe", plural="probes", group=None, decorator="register_probe",
                          builtins=("probe_kind_builtins_defs",))
    """)
    )
    (tmp_path / "test_probe_info.py").write_text(
        textwrap.dedent("""
        from dataclasses import dataclass
        @dataclass(frozen=True)
        class ProbeInfo:
            name: str
            aliases: tuple = ()
            source: str = "podbench"
    """)
    )
    (tmp_path / "probe_kind_builtins_defs.py").write_text(
        textwrap.dedent("""
        from probe_kind_builtins import PROBES
        from test_probe_info import ProbeInfo
        class Builtin: ...
        PROBES.add(ProbeInfo("builtin-probe"), owner=Builtin)
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import probe_kind_builtins  # noqa: PLC0415  (written by this test)

    assert "probe_kind_builtins_defs" not in sys.modules  # nothing imported before it is asked
    assert probe_kind_builtins.PROBES.names() == ["builtin-probe"]


# -- entry points: one loader for every kind ---------------------------------------------------

PLUGIN_MODULE = """
from pathlib import Path

import torch
from torch import nn

from podbench.losses import LossOutput, register_loss
from podbench.losses.softmax import SoftmaxLoss
from podbench.tasks import ArraySplit, DatasetSource, Located, RawData, register_arch, \\
    register_dataset


@register_loss("{p}-ce", description="cross-entropy at a temperature")
class TemperedCE(SoftmaxLoss):
    def __init__(self, num_classes: int, feat_dim: int, *, temperature: float = 2.0) -> None:
        super().__init__(num_classes, feat_dim)
        self.temperature = temperature

    def compute_loss(self, features, targets):
        ce = nn.functional.cross_entropy(self.head(features) / self.temperature, targets)
        return LossOutput(total=ce, parts={{"ce": ce}})


@register_dataset("{p}-bars", num_classes=2, channels=1, image_size=4, mean=(0.5,), std=(0.5,),
                  train_size=8, test_size=4, needs_files=False, description="bars")
class Bars(DatasetSource):
    def locate(self, root):
        return Located(Path("."), "generated")

    def read(self, located, *, image_size):
        def split(n):
            labels = torch.arange(n) % 2
            images = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
            images[labels == 0, :, :, :2] = 255  # class 0: left half lit; class 1: right half
            images[labels == 1, :, :, 2:] = 255
            return ArraySplit(images, labels)
        return RawData(split(8), split(4), ("left", "right"))


@register_arch("{p}-flat", description="flatten")
def flat(in_channels, image_size):
    return nn.Flatten(), in_channels * image_size * image_size


class Undecorated(DatasetSource):
    def locate(self, root):
        return None

    def read(self, located, *, image_size):
        raise NotImplementedError
"""

PROBE_KIND = """
from dataclasses import dataclass

from podbench.registry import Registry


@dataclass(frozen=True)
class ProbeInfo:
    name: str
    aliases: tuple = ()
    source: str = "podbench"


PROBES = Registry("probe", plural="probes", group="podbench.probes", decorator="register_probe")


def register_probe(name):
    def decorate(cls):
        PROBES.add(ProbeInfo(name), owner=cls)
        return cls
    return decorate
"""

PROBE_PLUGIN = """
from {p}_probe_kind import register_probe


@register_probe("{p}-probe")
class Probe:
    pass
"""


def _distribution(site: Path, name: str, entry_points: str) -> None:
    info = site / f"{name}-0.0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A site folder with a distribution that plugs one loss, dataset, architecture and probe in,
    plus a broken dataset entry point; the registries are restored afterwards."""
    prefix = f"plug{abs(hash(str(tmp_path))) % 10**8}"  # unique module and names per test
    site = tmp_path / "site"
    site.mkdir()
    (site / f"{prefix}_mod.py").write_text(PLUGIN_MODULE.format(p=prefix))
    (site / f"{prefix}_probe_kind.py").write_text(PROBE_KIND)
    (site / f"{prefix}_probe_plugin.py").write_text(PROBE_PLUGIN.format(p=prefix))
    _distribution(
        site,
        f"{prefix}-dist",
        f"""
        [podbench.losses]
        {prefix}-ce = {prefix}_mod:TemperedCE
        [podbench.datasets]
        {prefix}-bars = {prefix}_mod:Bars
        {prefix}-undecorated = {prefix}_mod:Undecorated
        {prefix}-missing = {prefix}_no_such_module:Bars
        [podbench.archs]
        {prefix}-flat = {prefix}_mod:flat
        [podbench.probes]
        {prefix}-probe = {prefix}_probe_plugin
    """,
    )
    with LOSSES.scratch(), DATASETS.scratch(), ARCHS.scratch():
        monkeypatch.syspath_prepend(str(site))
        yield prefix
        # the plugin module stays imported; its names must not outlive the test
    assert f"{prefix}-ce" not in list_losses() and f"{prefix}-bars" not in list_datasets()


def test_entry_points_of_every_kind_load_through_the_one_loader(
    plugin_site: str, capsys: pytest.CaptureFixture[str]
) -> None:
    p = plugin_site
    dist = f"{p}-dist"
    assert LOSSES.load_entry_points(reload=True) == {}
    assert ARCHS.load_entry_points(reload=True) == {}
    with pytest.warns(UserWarning) as caught:
        broken = DATASETS.load_entry_points(reload=True)
    assert set(broken) == {f"{p}-undecorated", f"{p}-missing"}
    assert "is not decorated with @register_dataset" in broken[f"{p}-undecorated"]
    assert f"{p}_no_such_module" in broken[f"{p}-missing"]
    assert {str(w.message).split(":")[0] for w in caught} == {
        f"podbench dataset plugin '{p}-undecorated'",
        f"podbench dataset plugin '{p}-missing'",
    }

    # each kind names the distribution that provides it, whichever group imported the module
    assert loss_info(f"{p}-ce").source == dist
    assert dataset_info(f"{p}-bars").source == dist
    assert arch_info(f"{p}-flat").source == dist
    assert dict(loss_info(f"{p}-ce").defaults) == {"temperature": 2.0}
    with pytest.raises(UserError, match=f"dataset '{p}-missing' is installed but broken"):
        load_task(f"{p}-missing")

    # and they work together as a run would use them
    task = load_task(f"{p}-bars", augment=False)
    net = create_arch(f"{p}-flat", in_channels=1, image_size=task.image_size, feat_dim=16)
    loss = create_loss(f"{p}-ce", num_classes=len(task.classes), feat_dim=16)
    x, y = next(task.eval_batches("train", 8))
    assert loss.temperature == 2.0 and x.shape == (8, 1, 4, 4)
    assert torch.equal(y, torch.arange(8) % 2)
    assert loss(net(x), y).total.isfinite()

    # `podbench tasks` lists the plugged-in ones and names the broken ones
    from podbench.cli import main

    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert f"{p}-bars" in out and f"{p}-flat" in out
    assert f"broken dataset plugin {p}-undecorated" in out

    # a fourth kind: a Registry instance and a decorator, no new machinery
    import importlib

    probes = importlib.import_module(f"{p}_probe_kind").PROBES
    assert probes.names() == [f"{p}-probe"]
    assert probes.get(f"{p}-probe").source == dist


@pytest.mark.parametrize(
    ("lookup", "old", "new"),
    [
        (loss_info, "label_smoothing", "label-smoothing"),
        (dataset_info, "fashion_mnist", "fashion-mnist"),
        (lambda n: arch_info(n), "mobilenet_v2", "mobilenet-v2"),
        (
            lambda n: create_arch(n, in_channels=3, image_size=32, feat_dim=4),
            "small_cnn",
            "small-cnn",
        ),
        (lambda n: load_task(n), "cifar-11", "cifar-10"),
    ],
)
def test_every_kind_answers_an_old_or_wrong_spelling_with_the_closest_name(lookup, old, new):
    with pytest.raises(UserError) as err:
        lookup(old)
    message = str(err.value)
    assert f"'{old}' (did you mean '{new}'?)" in message
    assert message.startswith("unknown ") and message.count(". ") == 0 and message.endswith(".")


def test_builtin_names_are_kebab_case() -> None:
    for registry in (LOSSES, DATASETS, ARCHS):
        # "pml:ArcFaceLoss": another library's names keep its spelling (serve_prefix)
        for name in [n for n in registry.names() if not n.startswith("pml:")]:
            for key in (name, *registry.get(name).aliases):
                assert check_name(registry.kind, key) == key
    assert "mobilenet-v2" in list_archs() and "mobilenet_v2" not in ARCHS


def test_module_docstring_example_runs() -> None:
    import doctest

    import podbench.registry

    result = doctest.testmod(podbench.registry)
    assert result.attempted >= 8 and result.failed == 0


def test_registry_serves_another_librarys_names_by_prefix() -> None:
    probes = _probes()
    probes.add(ProbeInfo("linear-probe"), owner=LinearProbe)
    calls: list[str] = []
    offered = {"KnnProbe": KnnProbe}

    def resolve(rest: str) -> tuple[ProbeInfo, object]:
        calls.append(rest)
        if rest not in offered:
            raise UserError(f"lib has no probe {rest!r}.")
        return ProbeInfo(f"lib:{rest}", source="lib 1.0"), offered[rest]

    probes.serve_prefix("lib", resolve, lambda: sorted(offered))
    # the library's own spelling (not kebab-case), listed among the registered names
    assert probes.names() == ["lib:KnnProbe", "linear-probe"]
    assert probes.get("lib:KnnProbe").source == "lib 1.0"
    assert probes.owner("lib:KnnProbe") is KnnProbe
    probes.get("lib:KnnProbe")
    assert calls == ["KnnProbe"]  # resolved once, then kept
    with pytest.raises(UserError, match="lib has no probe 'Nope'"):
        probes.get("lib:Nope")
    assert "lib:Nope" not in probes and "lib:KnnProbe" in probes
    with pytest.raises(UserError, match="unknown probe 'other:KnnProbe'"):
        probes.get("other:KnnProbe")  # not a served prefix: an ordinary unknown name

    def missing() -> list[str]:
        raise UserError("install lib.")

    unlisted = _probes()
    unlisted.serve_prefix("lib", resolve, missing)  # the library is missing: nothing listed
    assert unlisted.names() == []
    on_demand = _probes()
    on_demand.serve_prefix("lib", resolve)  # too many to list: served on demand only
    assert on_demand.names() == [] and on_demand.get("lib:KnnProbe").name == "lib:KnnProbe"

"""Registry: names, aliases, variants, hyperparameters, errors, metadata, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from podbench.cli import main
from podbench.errors import UserError
from podbench.losses import (
    LOSSES,
    LossPlugin,
    create_loss,
    list_losses,
    loss_info,
    register_loss,
)
from podbench.losses.base import LossOutput


def test_losses_list_is_sorted_and_has_no_aliases():
    names = list_losses()
    assert names == sorted(names)
    assert "am-softmax" not in names and "a-softmax" not in names


def test_losses_alias_resolves_to_the_same_loss():
    assert loss_info("am-softmax") is loss_info("cosface")
    plugin = create_loss("am-softmax", num_classes=3, feat_dim=4)
    assert type(plugin).__name__ == "CosFaceLoss" and plugin.s == 30.0 and plugin.m == 0.35


def test_losses_published_defaults():
    assert dict(loss_info("cosface").defaults) == {"s": 30.0, "m": 0.35}
    assert dict(loss_info("arcface").defaults) == {"s": 64.0, "m": 0.5}
    assert loss_info("label-smoothing").defaults["epsilon"] == 0.1
    assert loss_info("sphereface").defaults["margin"] == 4
    pod = loss_info("pod").defaults
    assert (pod["nac_weight"], pod["sc_weight"], pod["delta_schedule"]) == (1.0, 1.0, "official")
    assert (pod["alpha"], pod["delta_init"]) == (0.01, 0.05)
    assert loss_info("cot").updates_per_batch == 2
    assert loss_info("pod").fixed_centroids and not loss_info("pod").learnable_head
    assert loss_info("softmax").learnable_head and not loss_info("softmax").fixed_centroids


def test_losses_variant_then_hparams_override_defaults():
    plugin = create_loss("pod", num_classes=3, feat_dim=4, variant="no-sc", nac_weight=2.0)
    assert (plugin.sc_weight, plugin.nac_weight) == (0.0, 2.0)
    plugin = create_loss("pod", num_classes=3, feat_dim=4, variant="delta-none")
    assert plugin.delta == 0.0


def test_losses_pod_ablation_switches_are_variants():
    variants = loss_info("pod").variants
    assert variants["no-nac"] == {"nac_weight": 0.0}
    assert variants["no-sc"] == {"sc_weight": 0.0}
    schedules = {v.get("delta_schedule") for v in variants.values()}
    assert {"mean-norm", "constant", "none"} <= schedules
    assert {"charge", "random"} <= {v.get("centroids") for v in variants.values()}


def test_losses_search_spaces_are_valid_optuna_style_dicts():
    for name in list_losses():
        info = loss_info(name)
        for param, spec in info.search_space.items():
            assert param in info.defaults
            assert spec["type"] in {"float", "int", "categorical"}
            if spec["type"] == "categorical":
                assert info.defaults[param] in spec["choices"]
            else:
                assert spec["low"] < spec["high"]


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"name": "arcfce"}, ["'arcfce'", "did you mean 'arcface'", "cosface"]),
        ({"name": "pod", "sc_weigth": 1.0}, ["'sc_weigth'", "did you mean 'sc_weight'"]),
        ({"name": "pod", "variant": "no-scc"}, ["'no-scc'", "did you mean 'no-sc'", "no-nac"]),
        ({"name": "pod", "delta_schedule": "cosine"}, ["delta_schedule", "official"]),
        ({"name": "pod", "sc_weight": -1.0}, ["sc_weight", ">= 0"]),
        ({"name": "cosface", "s": float("nan")}, ["s=nan", "finite"]),
        ({"name": "l-softmax", "margin": 2.5}, ["margin", "integer"]),
        ({"name": "softmax", "num_classes": 1}, ["num_classes", ">= 2"]),
    ],
)
def test_losses_user_errors_name_the_field_and_the_fix(kwargs, words):
    kwargs = {"num_classes": 5, "feat_dim": 8, **kwargs}
    name = kwargs.pop("name")
    with pytest.raises(UserError) as info:
        create_loss(name, **kwargs)
    message = str(info.value)
    for word in words:
        assert word in message
    assert message.count(". ") == 0 and message.endswith(".")  # one sentence


def test_losses_register_rejects_inconsistent_metadata(scratch_registry):
    class Tiny(LossPlugin):
        def __init__(self, num_classes: int, feat_dim: int, *, w: float = 1.0) -> None:
            super().__init__(num_classes, feat_dim)

    with pytest.raises(ValueError, match="low < high"):
        register_loss(
            "tiny-x", description="x",
            search_space={"w": {"type": "float", "low": 2, "high": 1}},
        )(Tiny)  # fmt: skip
    with pytest.raises(ValueError, match="search space names 'v'"):
        register_loss(
            "tiny-x", description="x", search_space={"v": {"type": "int", "low": 1, "high": 2}}
        )(Tiny)
    with pytest.raises(ValueError, match="unknown 'v'"):
        register_loss("tiny-x", description="x", variants={"a": {"v": 2}})(Tiny)
    with pytest.raises(ValueError, match="already registered"):
        register_loss("softmax", description="clash")(Tiny)
    with pytest.raises(ValueError, match="already registered"):
        register_loss("tiny-x", description="alias clash", aliases=("am-softmax",))(Tiny)
    with pytest.raises(UserError, match="kebab-case.*'tiny-x'"):
        register_loss("tiny_x", description="snake case")(Tiny)
    assert "tiny-x" not in list_losses()


def test_losses_hyperparameters_must_be_keyword_only_with_defaults(scratch_registry):
    class Positional(LossPlugin):
        def __init__(self, num_classes: int, feat_dim: int, w: float = 1.0) -> None:
            super().__init__(num_classes, feat_dim)

    class NoDefault(LossPlugin):
        def __init__(self, num_classes: int, feat_dim: int, *, w: float) -> None:
            super().__init__(num_classes, feat_dim)

    with pytest.raises(ValueError, match="'w' must be keyword-only"):
        register_loss("tiny-x", description="x")(Positional)
    with pytest.raises(ValueError, match="'w' needs a default"):
        register_loss("tiny-x", description="x")(NoDefault)
    assert "tiny-x" not in list_losses()


# The defaults every built-in loss declared in its decorator's `defaults=` before they were read
# from the __init__ signature (git history of losses/*.py as of commit a2e9df1, "fidelity: losses
# as their authors ran them"), written out by hand.
DECORATOR_DEFAULTS = {
    "arcface": {"s": 64.0, "m": 0.5},
    "center": {"lam": 0.003, "alpha": 0.5},
    "cosface": {"s": 30.0, "m": 0.35},
    "cot": {"complement_norm": "released"},
    "l-softmax": {
        "margin": 4,
        "lambda_base": 1000.0,
        "lambda_gamma": 2.5e-5,
        "lambda_power": 35.0,
        "lambda_min": 0.0,
    },
    "label-smoothing": {"epsilon": 0.1, "bias": True},
    "pedcc": {
        "s": 15.0,
        "m": 0.5,
        "lam": 1.0,
        "n": 1.0,
        "mse_reduction": "sum",
        "centroids": "charge",
        "centroid_seed": None,
    },
    "pod": {
        "nac_weight": 1.0,
        "sc_weight": 1.0,
        "delta_schedule": "official",
        "alpha": 0.01,
        "delta_init": 0.05,
        "centroids": "simplex",
        "centroid_seed": None,
    },
    "softmax": {"bias": True},
    "sphereface": {
        "margin": 4,
        "lambda_base": 1000.0,
        "lambda_gamma": 0.12,
        "lambda_power": 1.0,
        "lambda_min": 5.0,
    },
}


@pytest.mark.parametrize("name", sorted(DECORATOR_DEFAULTS))
def test_losses_signature_defaults_equal_the_old_decorator_defaults(name):
    defaults = dict(loss_info(name).defaults)
    assert defaults == DECORATOR_DEFAULTS[name]
    # 4 stays an int and 1.0 a float: an Optuna int space and the run_id depend on the type
    assert [type(v) for v in defaults.values()] == [
        type(v) for v in DECORATOR_DEFAULTS[name].values()
    ]
    # a plugin built with no hyperparameters holds them (sphereface has its own lambda_min)
    seed = {"centroid_seed": 0} if "centroid_seed" in defaults else {}
    plugin = create_loss(name, num_classes=3, feat_dim=4, **seed)
    for param, value in defaults.items():
        if param not in ("centroids", "centroid_seed") and hasattr(plugin, param):
            assert getattr(plugin, param) == value, (name, param)


def test_losses_builtins_are_exactly_those_of_the_old_decorators():
    builtin = {n for n in list_losses() if loss_info(n).source == "podbench"}
    assert builtin == set(DECORATOR_DEFAULTS)


@pytest.fixture
def scratch_registry():
    """Losses registered by a test vanish after it (other rooms' tests list the registry)."""
    with LOSSES.scratch():
        yield


def test_losses_user_plugin_registers_and_is_created_by_name(scratch_registry):
    @register_loss("test-registry-mse", description="MSE to one-hot")
    class OneHotMSE(LossPlugin):
        def __init__(self, num_classes: int, feat_dim: int, *, scale: float = 2.0) -> None:
            super().__init__(num_classes, feat_dim)
            self.head = torch.nn.Linear(feat_dim, num_classes)
            self.scale = scale

        def compute_loss(self, features, targets):
            onehot = torch.nn.functional.one_hot(targets, self.num_classes).float()
            mse = (self.head(features) - self.scale * onehot).square().mean()
            return LossOutput(mse, {"mse": mse})

        def scores(self, features):
            return self.head(features)

    assert "test-registry-mse" in list_losses()
    plugin = create_loss("test-registry-mse", num_classes=3, feat_dim=2, scale=5.0)
    assert isinstance(plugin, OneHotMSE) and plugin.scale == 5.0
    assert loss_info("test-registry-mse").source == OneHotMSE.__module__  # in no distribution
    assert loss_info("pod").source == "podbench"


def test_losses_autocast_features_give_float32_loss():
    plugin = create_loss("pod", num_classes=3, feat_dim=4, centroid_seed=0)
    x = torch.randn(6, 4)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = plugin(x.bfloat16(), y)
    assert out.total.dtype == torch.float32
    torch.testing.assert_close(out.total, plugin(x.bfloat16().float(), y).total)


def test_losses_cli_lists_every_loss(capsys):
    assert main(["losses"]) == 0
    out = capsys.readouterr().out
    for name in list_losses():
        assert name in out
    assert "delta-none" in out  # variants are printed


def test_losses_cli_detail_and_json(capsys):
    assert main(["losses", "am-softmax", "--json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["name"] == "cosface" and record["defaults"] == {"s": 30.0, "m": 0.35}
    assert main(["losses", "pod"]) == 0
    out = capsys.readouterr().out
    assert "Zhu & Zu" in out and "delta_schedule" in out


def test_losses_cli_unknown_name_exits_2_without_traceback(capsys):
    assert main(["losses", "arcfce"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'arcface'" in err and "Traceback" not in err


def test_losses_registered_in_a_test_do_not_leak():
    assert "test-registry-mse" not in list_losses()


def test_losses_numeric_hyperparameters_from_yaml_or_samplers():
    np = pytest.importorskip("numpy")
    plugin = create_loss("l-softmax", num_classes=3, feat_dim=4, margin=3.0)
    assert plugin.margin == 3 and isinstance(plugin.margin, int)
    plugin = create_loss("cosface", num_classes=3, feat_dim=4, s=np.float32(16), m=np.int64(0))
    assert (plugin.s, plugin.m) == (16.0, 0.0)
    with pytest.raises(UserError, match="margin=2.5"):
        create_loss("l-softmax", num_classes=3, feat_dim=4, margin=2.5)
    with pytest.raises(UserError, match="s=True"):
        create_loss("cosface", num_classes=3, feat_dim=4, s=True)

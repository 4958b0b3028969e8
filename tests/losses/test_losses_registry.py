"""Registry: names, aliases, variants, hyperparameters, errors, metadata, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from podbench.cli import main
from podbench.errors import UserError
from podbench.losses import LossPlugin, create_loss, list_losses, loss_info, register_loss, registry
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

    with pytest.raises(ValueError, match="not an __init__ argument"):
        register_loss("tiny-x", description="x", defaults={"v": 1})(Tiny)
    with pytest.raises(ValueError, match="low < high"):
        register_loss(
            "tiny-x", description="x", defaults={"w": 1.0},
            search_space={"w": {"type": "float", "low": 2, "high": 1}},
        )(Tiny)  # fmt: skip
    with pytest.raises(ValueError, match="unknown 'v'"):
        register_loss("tiny-x", description="x", defaults={"w": 1.0}, variants={"a": {"v": 2}})(
            Tiny
        )
    with pytest.raises(ValueError, match="already registered"):
        register_loss("softmax", description="clash")(Tiny)
    assert "tiny-x" not in list_losses()


@pytest.fixture
def scratch_registry(monkeypatch):
    """Losses registered by a test vanish after it (other rooms' tests list the registry)."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_ALIASES", dict(registry._ALIASES))


def test_losses_user_plugin_registers_and_is_created_by_name(scratch_registry):
    @register_loss("test-registry-mse", description="MSE to one-hot", defaults={"scale": 2.0})
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

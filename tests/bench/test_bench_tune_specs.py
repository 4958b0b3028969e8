"""Tune files: loading, search spaces, equal budget, errors, --set, best-point suites (no Ray)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from podbench.errors import UserError
from podbench.suite_spec import SuiteSpec
from podbench.tuning import TuneSpec, best_suites, load_tune

TINY = {
    "name": "tiny",
    "dataset": "digits",
    "arch": "mlp",
    "feat_dim": 16,
    "epochs": 2,
    "n_trials": 3,
    "batch_size": 64,
    "losses": {"softmax": {}, "pod": {"space": {"centroids": None}}},
}


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def error_of(tmp_path: Path, data: dict, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(UserError) as info:
        load_tune(write(tmp_path, data), overrides)
    message = str(info.value)
    assert "\n" not in message  # one sentence, no traceback
    return message


def test_builtin_quickstart_is_equal_budget_pod_vs_softmax() -> None:
    spec = load_tune("tune-quickstart")
    assert spec.dataset == "fashion-mnist" and spec.arch == "small-cnn"
    assert set(spec.losses) == {"pod", "softmax"}
    assert spec.eval_split == "val"
    for label in spec.losses:
        space = spec.distributions(label)
        assert {"lr", "weight_decay"} <= set(space)  # every loss tunes lr and weight decay
        run = spec.run_for(label, {"lr": 0.05, "weight_decay": 1e-4})
        assert run.epochs == spec.epochs and run.eval_split == "val"
    assert {"nac_weight", "sc_weight"} <= set(spec.distributions("pod"))


def test_builtin_pod_cifar10_has_authors_settings_and_pod_ablations() -> None:
    spec = load_tune("tune-pod-cifar10")
    # LOSSES.md: ResNet-50, SGD lr 0.1 momentum 0.9, wd 5e-4, batch 200, 100 epochs, 30/60/90, d=256
    assert (spec.dataset, spec.arch, spec.feat_dim, spec.batch_size) == (
        "cifar10",
        "resnet50",
        256,
        200,
    )
    assert (spec.epochs, spec.milestones, spec.momentum, spec.optimizer) == (
        100,
        [30, 60, 90],
        0.9,
        "sgd",
    )
    assert spec.gpus >= 1
    space = spec.distributions("pod")
    assert set(space) >= {
        "nac_weight",
        "sc_weight",
        "alpha",
        "delta_schedule",
        "centroids",
        "feat_dim",
        "lr",
        "weight_decay",
    }
    assert isinstance(space["delta_schedule"], optuna.distributions.CategoricalDistribution)
    assert set(space["centroids"].choices) == {"simplex", "charge", "random"}
    first = spec.losses["pod"].enqueue[0]
    run = spec.run_for("pod", first)
    assert (run.lr, run.weight_decay, run.feat_dim) == (0.1, 5e-4, 256)
    assert run.loss_params == {
        "nac_weight": 1.0,
        "sc_weight": 1.0,
        "alpha": 0.01,
        "delta_schedule": "official",
        "centroids": "simplex",
    }


def test_space_layers_plugin_then_file_then_loss(tmp_path: Path) -> None:
    from podbench.losses import loss_info

    data = dict(TINY, space={"lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True}})
    data["losses"] = {
        "pod": {
            "params": {"alpha": 0.02},
            "space": {
                "sc_weight": {"type": "float", "low": 0.5, "high": 2.0},
                "centroids": None,
                # a simplex of digits' 10 centroids needs feat_dim >= 9 (load_tune builds each)
                "feat_dim": {"type": "categorical", "choices": [12, 16]},
            },
        }
    }
    spec = load_tune(write(tmp_path, data))
    space = spec.distributions("pod")
    plugin = loss_info("pod").search_space
    # overridden by the loss entry, the file, kept from the plugin, removed, fixed
    assert (space["sc_weight"].low, space["sc_weight"].high, space["sc_weight"].log) == (
        0.5,
        2.0,
        False,
    )
    assert (space["lr"].low, space["lr"].high) == (0.01, 0.1)
    assert space["weight_decay"].high == 1e-2  # default space entry kept
    assert space["nac_weight"].low == plugin["nac_weight"]["low"]
    assert "centroids" not in space and "alpha" not in space
    run = spec.run_for(
        "pod",
        {
            "lr": 0.05,
            "weight_decay": 1e-5,
            "sc_weight": 1.5,
            "feat_dim": 12,
            "nac_weight": 2.0,
            "delta_schedule": "none",
        },
    )
    assert (run.lr, run.weight_decay, run.feat_dim) == (0.05, 1e-5, 12)
    assert run.loss_params == {
        "alpha": 0.02,
        "sc_weight": 1.5,
        "nac_weight": 2.0,
        "delta_schedule": "none",
    }


def test_set_overrides_apply(tmp_path: Path) -> None:
    spec = load_tune(write(tmp_path, TINY), ["n_trials=7", "losses.pod.space.sc_weight.high=2.5"])
    assert spec.n_trials == 7
    assert spec.distributions("pod")["sc_weight"].high == 2.5


@pytest.mark.parametrize(
    ("change", "where", "hint"),
    [
        ({"losses": {"pod": {"n_trials": 5}}}, "losses.pod", "same budget"),
        ({"losses": {"pod": {"epochs": 5}}}, "losses.pod", "same budget"),
        ({"eval_split": "test"}, "eval_split", "validation split"),
        (
            {"losses": {"pod": {"space": {"bogus": {"type": "float", "low": 0, "high": 1}}}}},
            "losses.pod.space.bogus",
            "no hyperparameter",
        ),
        (
            {"losses": {"pod": {"space": {"sc_weight": {"type": "float", "low": 2, "high": 1}}}}},
            "losses.pod.space.sc_weight",
            "below high",
        ),
        (
            {"losses": {"pod": {"space": {"sc_weight": {"type": "uniform", "low": 0, "high": 1}}}}},
            "losses.pod.space.sc_weight",
            "type",
        ),
        ({"losses": {"nosuchloss": {}}}, "losses.nosuchloss", "unknown loss"),
        ({"losses": {"pod": {"variant": "no-such"}}}, "losses.pod.variant", "no variant"),
        ({"losses": {"pod": {"params": {"lr": 0.1}}}}, "losses.pod.params.lr", "run setting"),
        ({"losses": {"pod": {"enqueue": [{"lr": 50.0}]}}}, "losses.pod.enqueue.0.lr", "outside"),
        ({"early_stopping": {"grace_period": 2}}, "early_stopping", "below"),
        ({"dataset": "nope"}, "dataset", "unknown dataset"),
        ({"n_trials": 0}, "n_trials", "greater than or equal"),
    ],
)
def test_bad_tune_files_name_the_field(tmp_path: Path, change: dict, where: str, hint: str) -> None:
    data = {**TINY, **change}
    if "losses" in change:
        data["losses"] = change["losses"]
    message = error_of(tmp_path, data)
    assert where in message and hint in message, message


def test_missing_file_and_unknown_builtin() -> None:
    with pytest.raises(UserError, match="no such tune file"):
        load_tune("no/such/file.yaml")
    with pytest.raises(UserError, match="built-in"):
        load_tune("tune-no-such")


def test_best_suites_rerun_the_best_point_on_test_over_seeds() -> None:
    spec = TuneSpec.model_validate(TINY)
    best = {
        "pod": {
            "trial": 2,
            "val_acc": 0.9,
            "params": {
                "lr": 0.02,
                "weight_decay": 3e-5,
                "sc_weight": 0.5,
                "nac_weight": 2.0,
                "alpha": 0.05,
                "delta_schedule": "constant",
            },
        },
        "softmax": {"trial": 0, "val_acc": 0.8, "params": {"lr": 0.2, "weight_decay": 1e-6}},
    }
    suites = best_suites(spec, best, seeds=3)
    runs = {label: SuiteSpec.model_validate(s).expand() for label, s in suites.items()}
    for label, point in best.items():
        assert [r.seed for r in runs[label]] == [0, 1, 2]
        for r in runs[label]:
            # the best point is a method of its own beside an untuned run of the loss
            assert r.eval_split == "test" and r.label == f"{label}[tuned]" and r.epochs == 2
            assert (r.lr, r.weight_decay) == (
                point["params"]["lr"],
                point["params"]["weight_decay"],
            )
    assert runs["pod"][0].loss_params == {
        "sc_weight": 0.5,
        "nac_weight": 2.0,
        "alpha": 0.05,
        "delta_schedule": "constant",
    }
    # both methods belong to one suite, so the report compares them
    assert {r.suite for rs in runs.values() for r in rs} == {"tiny-best"}


def test_cli_bad_tune_file_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from podbench.cli import main

    data = {**TINY, "losses": {"pod": {"n_trials": 9}}}
    code = main(["tune", str(write(tmp_path, data)), "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "losses.pod" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # nothing written before the file is valid
    assert main(["tune", "tune-quickstart", "--seeds", "0"]) == 2
    assert "--seeds 0" in capsys.readouterr().err


def test_cli_unusable_storage_is_a_user_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from podbench.cli import main

    path = write(tmp_path, TINY)
    code = main(
        ["tune", str(path), "--results", str(tmp_path / "r"), "--storage", "nosuchdb://x/y"]
    )
    err = capsys.readouterr().err
    assert (
        code == 2 and "--storage nosuchdb://x/y" in err and "postgresql+psycopg://" in err
    )  # names the driver


def _tune_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    from podbench.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(
    ("loss", "field", "problem"),
    [
        # a fixed parameter of the wrong type: the old code failed every trial instead
        (
            {"params": {"sc_weight": "heavy"}, "space": {"centroids": None}},
            "losses.pod",
            "pod: sc_weight='heavy' is invalid; give a finite number >= 0.",
        ),
        # one choice of a categorical of the wrong type, not the first (the corner)
        (
            {
                "space": {
                    "centroids": None,
                    "nac_weight": {"type": "categorical", "choices": [1.0, "big"]},
                }
            },
            "losses.pod.space.nac_weight",
            "pod: nac_weight='big' is invalid",
        ),
    ],
)
@pytest.mark.parametrize("verb", ["validate", "tune"])
def test_a_loss_parameter_of_the_wrong_type_fails_when_the_file_loads(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    verb: str,
    loss: dict,
    field: str,
    problem: str,
) -> None:
    path = write(tmp_path, {**TINY, "losses": {"pod": loss}})
    err = _tune_refused(
        [verb, str(path), "--results", str(tmp_path / "r")][: 2 if verb == "validate" else 4],
        capsys,
    )
    assert f"tune.yaml: field '{field}' (for pod, feat_dim=16): {problem}" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("changes", "args", "needle"),
    [
        ({"feat_dim": "1e9"}, [], "field 'feat_dim': feat_dim 1000000000 is above 65536"),
        # (yaml.safe_dump sorts the losses: pod is checked first)
        (
            {"space": {"feat_dim": {"type": "int", "low": 16, "high": 10**8}}},
            [],
            "field 'space.feat_dim' (for pod): feat_dim 100000000 is above 65536",
        ),
        (
            {"n_trials": 6000},
            [],
            "field 'n_trials': 6000 trials for each of 2 loss(es) make "
            "12,000 runs, more than --max-runs 10000",
        ),
        (
            {},
            ["--seeds", "6000"],
            "--seeds 6000: reruns 12,000 runs (2 loss(es)), more than --max-runs 10000",
        ),
    ],
)
def test_tune_files_are_bounded_like_suites(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    changes: dict,
    args: list[str],
    needle: str,
) -> None:
    path = write(tmp_path, {**TINY, **changes})
    err = _tune_refused(["tune", str(path), "--results", str(tmp_path / "r"), *args], capsys)
    assert needle in err


def test_tune_trials_asking_for_a_gpu_the_machine_lacks_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    path = write(tmp_path, {**TINY, "gpus": 0.5})
    err = _tune_refused(["tune", str(path), "--results", str(tmp_path / "r")], capsys)
    assert (
        "field 'gpus': each trial asks for 0.5 GPU, more than any node of the embedded Ray" in err
    )
    assert "--set gpus=0 --set device=cpu" in err and not (tmp_path / "r").exists()

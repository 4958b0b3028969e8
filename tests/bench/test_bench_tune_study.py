"""Tiny real studies on digits through Ray: completion, equal budget, resume, pruning, no test reads.

One embedded Ray (2 CPUs) serves the module. Its workers run a setup hook that wraps
``podbench.tasks.load_task`` to append every split a trial's Task reads to a file, so the test can
see what the real trial processes touched.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from podbench.errors import UserError
from podbench.suite_spec import SuiteSpec
from podbench.tuning import TuneSpec, budget_used, run_study, storage_url, study_name

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def tiny_spec(name: str, **changes: object) -> TuneSpec:
    data: dict[str, object] = {
        "name": name,
        "dataset": "digits",
        "arch": "mlp",
        "feat_dim": 16,
        "epochs": 2,
        "n_trials": 3,
        "n_startup_trials": 2,
        "batch_size": 64,
        "schedule": "constant",
        "max_concurrent": 2,
        "early_stopping": {"grace_period": 1, "reduction_factor": 2},
        "losses": {
            "softmax": {},
            "pod": {"space": {"centroids": None, "alpha": None, "delta_schedule": None}},
        },
    }
    data.update(changes)
    return TuneSpec.model_validate(data)


@pytest.fixture(scope="module")
def split_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Start Ray whose workers log (pid, use_val, split) of every Task read to this file."""
    import ray

    log = tmp_path_factory.mktemp("splits") / "reads.jsonl"
    log.touch()

    def record_reads() -> None:  # runs in every Ray worker before any task
        import podbench.tasks as tasks

        original = tasks.load_task

        def load_task(*args, **kwargs):  # type: ignore[no-untyped-def]
            task = original(*args, **kwargs)
            use_val = bool(kwargs.get("use_val", False))
            inner = task.eval_batches

            def eval_batches(split, batch_size):  # type: ignore[no-untyped-def]
                with open(log, "a") as fh:
                    fh.write(
                        json.dumps({"pid": os.getpid(), "use_val": use_val, "split": split}) + "\n"
                    )
                return inner(split, batch_size)

            task.eval_batches = eval_batches
            with open(log, "a") as fh:
                fh.write(json.dumps({"pid": os.getpid(), "use_val": use_val, "split": None}) + "\n")
            return task

        tasks.load_task = load_task

    if ray.is_initialized():
        ray.shutdown()
    os.environ["RAY_CHDIR_TO_TRIAL_DIR"] = "0"
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        runtime_env={
            "worker_process_setup_hook": record_reads,
            "env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0"},
        },
        logging_level="WARNING",
    )
    yield log
    ray.shutdown()


def reads(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def test_tiny_study_completes_with_equal_budgets_and_never_reads_test(
    split_log: Path, tmp_path: Path
) -> None:
    before = len(reads(split_log))
    spec = tiny_spec("tiny")
    outcome = run_study(spec, tmp_path)
    folder = tmp_path / "tune" / "tiny"

    table = pd.read_csv(folder / "trials.csv")
    assert {
        "number",
        "loss",
        "state",
        "value",
        "epochs_run",
        "params_lr",
        "params_weight_decay",
        "params_sc_weight",
    } <= set(table.columns)
    # equal budget: the same number of trials and at most the same epochs for every loss
    assert table.groupby("loss").size().to_dict() == {"pod": 3, "softmax": 3}
    assert set(table["state"]) <= {"COMPLETE", "PRUNED"}
    assert (table["epochs_run"] <= 2).all()
    assert (table.loc[table["state"] == "COMPLETE", "epochs_run"] == 2).all()
    done = table[table["state"] == "COMPLETE"]
    assert ((done["value"] >= 0) & (done["value"] <= 1)).all()
    assert (done.groupby("loss")["value"].max() > 0.3).all()  # well above chance (0.1)

    # the best point and its rerun suite agree with the table
    best = yaml.safe_load((folder / "best.yaml").read_text())
    for label, group in done.groupby("loss"):
        top = group.loc[group["value"].idxmax()]
        entry = best["losses"][label]
        assert entry["trial"] == top["number"] and math.isclose(entry["val_acc"], top["value"])
        suite = SuiteSpec.model_validate(entry["suite"])
        assert suite.eval_split == "test" and math.isclose(suite.lr, top["params_lr"])

    imps = json.loads((folder / "importances.json").read_text())
    for label, group in done.groupby("loss"):
        if len(group) >= 2:
            assert set(imps[label]) <= {
                c.removeprefix("params_") for c in table.columns if c.startswith("params_")
            }
            assert math.isclose(sum(imps[label].values()), 1.0, rel_tol=1e-6)
    assert outcome.ran == {"softmax": 3, "pod": 3}

    # what the trial processes read: tasks built with a validation split, and only "val" evaluated
    seen = reads(split_log)[before:]
    assert seen, "the workers' setup hook recorded nothing"
    assert all(r["use_val"] for r in seen)
    assert {r["split"] for r in seen} - {None} == {"val"}


def test_resume_keeps_trials_and_adds_to_the_target(split_log: Path, tmp_path: Path) -> None:
    # all 5 trials in the random start-up phase: a resumed sampler must not redraw the first points
    spec = tiny_spec("resume", losses={"softmax": {}}, n_startup_trials=10)
    run_study(spec, tmp_path)
    url = storage_url(spec, tmp_path)
    study = optuna.load_study(study_name=study_name(spec, "softmax"), storage=url)
    first = [(t.number, t.params, t.value, t.state) for t in study.get_trials()]
    assert len(first) == 3

    # a trial asked by something other than a driver (no heartbeat, no label) stays RUNNING:
    # once older than the grace period it must not count nor block
    study.ask()
    time.sleep(4.5)

    bigger = tiny_spec("resume", losses={"softmax": {}}, n_trials=5, n_startup_trials=10)
    outcome = run_study(bigger, tmp_path, heartbeat_s=1, grace_s=4)
    assert outcome.interrupted == {"softmax": 1} and outcome.ran == {"softmax": 2}
    study = optuna.load_study(study_name=study_name(spec, "softmax"), storage=url)
    trials = study.get_trials()
    assert [(t.number, t.params, t.value, t.state) for t in trials[:3]] == first
    assert trials[3].state == optuna.trial.TrialState.FAIL and trials[3].user_attrs["interrupted"]
    assert budget_used(study) == 5
    assert [t.number for t in trials] == [0, 1, 2, 3, 4, 5]
    assert all(t.state.is_finished() for t in trials)
    drawn = [tuple(sorted(t.params.items())) for t in trials if t.params]
    assert len(set(drawn)) == len(drawn)  # no point tried twice

    # a changed objective cannot continue the study: the message names what changed
    with pytest.raises(UserError, match="epochs"):
        run_study(
            tiny_spec("resume", losses={"softmax": {}}, n_trials=5, n_startup_trials=10, epochs=3),
            tmp_path,
        )

    again = run_study(bigger, tmp_path)  # at the target: runs nothing
    assert again.ran == {"softmax": 0}
    assert len(optuna.load_study(study_name=study_name(spec, "softmax"), storage=url).trials) == 6
    table = pd.read_csv(tmp_path / "tune" / "resume" / "trials.csv")
    assert list(table["number"]) == [0, 1, 2, 3, 4, 5]


def test_absurd_learning_rate_is_stopped_early(split_log: Path, tmp_path: Path) -> None:
    # softmax NaNs at once (the engine stops it as diverged); POD's normalised cosine does not,
    # so ASHA must prune it after the grace period on its chance-level validation accuracy
    points = [
        {"lr": 0.1, "weight_decay": 1e-4},
        {"lr": 0.05, "weight_decay": 1e-4},
        {"lr": 1000.0, "weight_decay": 1e-4},
    ]
    pod_fixed = {"centroids": None, "alpha": None, "delta_schedule": None}
    spec = tiny_spec(
        "absurd",
        epochs=4,
        max_concurrent=1,  # the enqueued points run in order, the absurd one last
        space={"lr": {"type": "float", "low": 1e-3, "high": 1e3, "log": True}},
        losses={"softmax": {"enqueue": points}, "pod": {"space": pod_fixed, "enqueue": points}},
    )
    elsewhere = tmp_path / "elsewhere" / "studies.db"
    elsewhere.parent.mkdir()
    run_study(spec, tmp_path, storage=f"sqlite:///{elsewhere}")
    assert elsewhere.is_file() and not (tmp_path / "tune" / "absurd" / "optuna.db").exists()
    table = pd.read_csv(tmp_path / "tune" / "absurd" / "trials.csv")
    for label, group in table.groupby("loss"):
        absurd = group[group["params_lr"] == 1000.0].iloc[0]
        assert absurd["state"] == "PRUNED", label
        assert absurd["epochs_run"] <= spec.early_stopping.grace_period, label
        assert absurd["status"] in {"pruned", "diverged"}
        first = group[group["number"] == 0].iloc[0]
        assert first["state"] == "COMPLETE" and first["epochs_run"] == 4


def test_cli_seeds_reruns_best_points_on_test_as_suite_runs(
    split_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from podbench.cli import main

    spec = {
        "name": "seeded",
        "dataset": "digits",
        "arch": "mlp",
        "feat_dim": 16,
        "epochs": 1,
        "n_trials": 2,
        "batch_size": 64,
        "schedule": "constant",
        "max_concurrent": 2,
        "early_stopping": {"enabled": False},
        "losses": {"pod": {"params": {"centroids": "simplex"}}},
    }
    path = tmp_path / "seeded.yaml"
    path.write_text(yaml.safe_dump(spec))
    # the README's sequence: a suite run into out/, then the tuned best point into the same out/
    suite = {
        k: spec[k] for k in ("dataset", "arch", "feat_dim", "epochs", "batch_size", "schedule")
    }
    suite = {
        "name": "untuned",
        "losses": [{"name": "pod", "params": {"centroids": "simplex"}}],
        "datasets": [suite.pop("dataset")],
        "archs": [suite.pop("arch")],
        "seeds": 2,
        **suite,
    }
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    # the suite executor hands its progress stream to Ray, which cannot pickle pytest's capture
    with capsys.disabled():
        assert (
            main(
                [
                    "run",
                    str(tmp_path / "suite.yaml"),
                    "--results",
                    str(tmp_path / "r"),
                    "--no-report",
                ]
            )
            == 0
        )
    before = len(reads(split_log))
    with capsys.disabled():
        assert main(["tune", str(path), "--results", str(tmp_path / "r"), "--seeds", "2"]) == 0
    best = yaml.safe_load((tmp_path / "r" / "tune" / "seeded" / "best.yaml").read_text())["losses"]
    records = [json.loads(p.read_text()) for p in (tmp_path / "r" / "runs").glob("*.json")]
    # the tuned point is a method of its own beside the suite's, not two more seeds of `pod`
    assert sorted((r["label"], r["seed"]) for r in records) == [
        ("pod", 0),
        ("pod", 1),
        ("pod[tuned]", 0),
        ("pod[tuned]", 1),
    ]
    stats = json.loads((tmp_path / "r" / "report" / "stats.json").read_text())
    assert sorted(stats["labels"]) == ["pod", "pod[tuned]"]
    assert all(r["spec"]["lr"] == 0.1 for r in records if r["label"] == "pod")
    records = [r for r in records if r["label"] == "pod[tuned]"]
    for r in records:
        assert r["status"] == "completed" and r["spec"]["eval_split"] == "test"
        assert r["final_test_acc"] is not None and r["suite"] == "seeded-best"
        assert math.isclose(r["spec"]["lr"], best["pod"]["params"]["lr"])
        assert r["spec"]["loss_params"]["centroids"] == "simplex"
    assert (tmp_path / "r" / "results.csv").is_file()
    # the tuning trials read "val" only; the reruns are what read "test"
    splits = [r["split"] for r in reads(split_log)[before:] if r["split"]]
    first_test = splits.index("test")
    assert set(splits[:first_test]) == {"val"} and set(splits[first_test:]) == {"test"}

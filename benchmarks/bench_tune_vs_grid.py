"""Epochs the tuner needs to match the best validation accuracy of an equal-budget grid.

For each loss: a grid of lr x weight_decay (every point trained the full epochs, no early stop)
and a TPE+ASHA study with the same number of trials and epochs per trial. Reported: the grid's
best val acc and total epochs; for each tuner seed, the epochs summed over the tuner's trials (in
trial order) up to the first trial whose final val acc reaches the grid's best, and the tuner's
own best and total epochs.

    python benchmarks/bench_tune_vs_grid.py RESULTS_DIR [dataset] [arch]
"""

from __future__ import annotations

import itertools
import sys
import time

import pandas as pd

from podbench.tuning import TuneSpec, run_study

LRS = [0.003, 0.01, 0.03, 0.1, 0.3]
WDS = [1e-5, 1e-4, 1e-3]
EPOCHS = 5
TUNER_TRIALS = 40  # more trials than the grid: the tuner's pruned trials cost fewer epochs


def base(name: str, dataset: str, arch: str, **extra: object) -> dict:
    d = {
        "name": name,
        "dataset": dataset,
        "arch": arch,
        "feat_dim": 16,
        "epochs": EPOCHS,
        "batch_size": 64,
        "schedule": "cosine",
        "max_concurrent": 2,
        "cpus": 1,
        "val_fraction": 0.25,  # 450 validation digits: accuracy steps of 0.2 %
        "n_trials": len(LRS) * len(WDS),
        "space": {
            "lr": {"type": "float", "low": min(LRS), "high": max(LRS), "log": True},
            "weight_decay": {"type": "float", "low": min(WDS), "high": max(WDS), "log": True},
        },
    }
    d.update(extra)
    return d


POD_FIXED = {
    "nac_weight": None,
    "sc_weight": None,
    "alpha": None,
    "delta_schedule": None,
    "centroids": None,
}


def main() -> None:
    out, dataset, arch = (
        sys.argv[1],
        (sys.argv[2:3] or ["digits"])[0],
        (sys.argv[3:4] or ["mlp"])[0],
    )
    grid = [{"lr": lr, "weight_decay": wd} for lr, wd in itertools.product(LRS, WDS)]
    losses = {"softmax": {}, "pod": {"space": POD_FIXED}}
    t0 = time.time()
    grid_spec = TuneSpec.model_validate(
        base(
            "grid",
            dataset,
            arch,
            early_stopping={"enabled": False},
            losses={k: {**v, "enqueue": grid} for k, v in losses.items()},
        )
    )
    run_study(grid_spec, out, num_cpus=2)
    g = pd.read_csv(f"{out}/tune/grid/trials.csv")
    print(f"grid done in {time.time() - t0:.0f}s")
    rows = []
    for seed in (0, 1, 2):
        t0 = time.time()
        spec = TuneSpec.model_validate(
            base(
                f"tpe-{seed}",
                dataset,
                arch,
                seed=seed,
                n_startup_trials=5,
                n_trials=TUNER_TRIALS,
                early_stopping={"enabled": True, "grace_period": 1, "reduction_factor": 3},
                losses=losses,
            )
        )
        run_study(spec, out, num_cpus=2)
        t = pd.read_csv(f"{out}/tune/tpe-{seed}/trials.csv")
        print(f"tuner seed {seed} done in {time.time() - t0:.0f}s")
        for loss in losses:
            gl, tl = g[g["loss"] == loss], t[t["loss"] == loss].sort_values("number")
            target = gl["value"].max()
            cum = tl["epochs_run"].cumsum()
            hit = tl.index[(tl["state"] == "COMPLETE") & (tl["value"] >= target - 1e-12)]
            reached = int(cum.loc[hit[0]]) if len(hit) else None
            rows.append(
                {
                    "loss": loss,
                    "seed": seed,
                    "grid_best": target,
                    "grid_epochs": int(gl["epochs_run"].sum()),
                    "tuner_best": tl["value"].max(),
                    "tuner_epochs": int(tl["epochs_run"].sum()),
                    "tuner_best_within_grid_epochs": tl.loc[
                        cum <= int(gl["epochs_run"].sum()), "value"
                    ].max(),
                    "epochs_to_grid_best": reached,
                    "trial_reaching": int(tl.loc[hit[0], "number"]) if len(hit) else None,
                }
            )
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    table.to_csv(f"{out}/tune_vs_grid.csv", index=False)


if __name__ == "__main__":
    main()

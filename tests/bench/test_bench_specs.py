"""Suite specs: grid expansion, defaults, run_id, overrides, errors with field paths, CLI exit 2."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from podbench.cli import main
from podbench.errors import UserError
from podbench.runs import RunSpec
from podbench.spec_files import apply_overrides, builtin_suites
from podbench.suite_spec import SuiteSpec, load_suite

SMALL = """
name: small
losses:
  - softmax
  - {name: pod, variants: [null, no-sc]}
  - {name: cosface, params: {m: 0.2}, grid: {s: [16, 30]}}
datasets: [digits]
archs: [mlp]
feat_dim: [16, 32]
seeds: 2
epochs: 10
"""


def _write(tmp_path: Path, text: str, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_grid_expansion_labels_and_defaults(tmp_path: Path) -> None:
    spec = load_suite(_write(tmp_path, SMALL))
    runs = spec.expand()
    # methods: softmax, pod, pod[no-sc], cosface[s=16], cosface[s=30] = 5; x 2 dims x 2 seeds
    assert len(runs) == 5 * 2 * 2
    assert len({r.run_id for r in runs}) == len(runs)
    # each latent size of the feat_dim grid is a method of its own, never pooled as seeds
    labels = sorted({r.label for r in runs})
    assert labels == sorted(
        [f"{m}[feat_dim={d}]" for m in ("pod", "softmax") for d in (16, 32)]
        + [
            f"{m}[{v},feat_dim={d}]"
            for m, v in [("cosface", "s=16"), ("cosface", "s=30"), ("pod", "no-sc")]
            for d in (16, 32)
        ]
    )
    for label in labels:
        assert sorted(r.seed for r in runs if r.label == label) == [0, 1]
        assert {f"feat_dim={r.feat_dim}]" for r in runs if r.label == label} == {
            label[label.index("feat_dim=") :]
        }
    cos16 = next(r for r in runs if r.label == "cosface[s=16,feat_dim=16]")
    assert cos16.loss_params == {"m": 0.2, "s": 16}
    assert {r.seed for r in runs} == {0, 1} and {r.feat_dim for r in runs} == {16, 32}
    run = runs[0]
    assert run.batch_size == 128  # digits has no authors' batch size: the fallback
    assert run.milestones == [3, 6, 9]  # the authors' 30/60/90 of 100, scaled to 10 epochs
    assert (run.optimizer, run.lr, run.momentum, run.weight_decay) == ("sgd", 0.1, 0.9, 5e-4)


def test_dataset_entries_set_their_own_archs_and_training_length(tmp_path: Path) -> None:
    text = SMALL.replace(
        "datasets: [digits]",
        textwrap.dedent("""\
        datasets:
          - {name: digits, archs: [small-cnn, mlp], epochs: 20, limit_train: 300, limit_eval: 90, lr: 0.02}
          - {name: synthetic, batch_size: 32, image_size: 12}"""),
    )
    runs = load_suite(_write(tmp_path, text + "limit_eval: 50\n"), ["losses=[softmax]"]).expand()
    # blocks: digits x its own 2 archs, synthetic x the suite's 1; x 2 dims x 2 seeds
    by_block: dict[tuple[str, str], list[RunSpec]] = {}
    for r in runs:
        by_block.setdefault((r.dataset, r.arch), []).append(r)
    assert sorted(by_block) == [("digits", "mlp"), ("digits", "small-cnn"), ("synthetic", "mlp")]
    assert all(len(v) == 4 for v in by_block.values())
    digits = by_block[("digits", "mlp")][0]
    assert (digits.epochs, digits.limit_train, digits.limit_eval, digits.lr) == (20, 300, 90, 0.02)
    assert digits.milestones == [6, 12, 18]  # 30/60/90 % of the dataset's own 20 epochs
    synth = by_block[("synthetic", "mlp")][0]
    assert (synth.epochs, synth.limit_train, synth.limit_eval, synth.lr, synth.batch_size) == (
        10,
        None,
        50,
        0.1,
        32,
    )
    assert (synth.image_size, digits.image_size) == (12, None)  # only the entry that sets it
    assert synth.milestones == [3, 6, 9]  # the suite's 10 epochs


def test_dataset_archs_are_checked_with_their_field_path(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        SMALL.replace("datasets: [digits]", "datasets: [{name: digits, archs: [resnet51]}]"),
    )
    with pytest.raises(
        UserError, match=r"field 'datasets\.0\.archs\.0': unknown architecture 'resnet51'"
    ):
        load_suite(path)


def test_authors_dataset_defaults_fill_batch_and_latent_dim() -> None:
    spec = load_suite("paper-cifar10", build_losses=False)
    run = spec.expand()[0]
    assert (run.batch_size, run.feat_dim, run.arch, run.epochs) == (200, 256, "resnet50", 100)
    assert run.milestones == [30, 60, 90]
    run100 = load_suite("paper-cifar100", build_losses=False).expand()[0]
    assert (run100.batch_size, run100.feat_dim) == (128, 512)
    pedcc = [
        r for r in load_suite("paper-cifar100", build_losses=False).expand() if r.loss == "pedcc"
    ]
    assert {r.variant for r in pedcc} == {"cifar100"} and {r.label for r in pedcc} == {"pedcc"}


def test_run_id_covers_result_fields_only() -> None:
    run = load_suite("quickstart").expand()[0]
    assert len(run.run_id) == 16 and int(run.run_id, 16) >= 0
    same = run.model_copy(
        update={"suite": "x", "cpus": 4.0, "gpus": 0.5, "checkpoint": True, "label": "other"}
    )
    assert RunSpec.model_validate(same.model_dump()).run_id == run.run_id
    for change in (
        {"seed": 7},
        {"lr": 0.2},
        {"loss_params": {"sc_weight": 2.0}},
        {"epochs": 4},
        {"variant": "no-sc"},
        {"limit_train": 100},
    ):
        assert RunSpec.model_validate({**run.model_dump(), **change}).run_id != run.run_id


def test_run_id_is_stable_across_processes() -> None:
    import podbench

    # each child imports the podbench under test (its file is checked) under another hash seed
    code = (
        "import podbench; from podbench.suite_spec import load_suite; "
        "print(podbench.__file__); print(load_suite('quickstart').expand()[4].run_id)"
    )
    outputs = [
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
        ).stdout.split()
        for seed in ("0", "12345", "random")
    ]
    assert {file for file, _ in outputs} == {podbench.__file__}
    assert {run_id for _, run_id in outputs} == {load_suite("quickstart").expand()[4].run_id}


def test_amp_off_unquoted_is_off_not_false(tmp_path: Path) -> None:
    # YAML 1.1 reads a bare `off` as false; `amp: off` must still mean "off"
    assert yaml.safe_load("amp: off") == {"amp": False}
    runs = load_suite(_write(tmp_path, SMALL), ["amp=off"]).expand()
    assert {r.amp for r in runs} == {"off"}
    with pytest.raises(UserError, match="amp"):
        load_suite(_write(tmp_path, SMALL), ["amp=true"])


def test_overrides_dotted_keys_and_yaml_values(tmp_path: Path) -> None:
    spec = load_suite(
        _write(tmp_path, SMALL),
        [
            "epochs=2",
            "seeds=[5]",
            "losses.0.variant=null",
            "losses.1.variants=[no-nac]",
            "datasets=[synthetic]",
            "feat_dim=8",
            "lr=0.01",
        ],
    )
    runs = spec.expand()
    assert {r.epochs for r in runs} == {2} and {r.seed for r in runs} == {5}
    assert {r.dataset for r in runs} == {"synthetic"} and {r.lr for r in runs} == {0.01}
    assert "pod[no-nac]" in {r.label for r in runs}
    # shorthand entries become mappings when a key is set under them
    data = apply_overrides({"losses": ["pod"]}, ["losses.0.variant=no-sc"])
    assert data == {"losses": [{"name": "pod", "variant": "no-sc"}]}


@pytest.mark.parametrize(
    ("text", "overrides", "needle"),
    [
        (SMALL + "epoch: 3\n", [], "field 'epoch': unknown field"),
        (SMALL, ["epochs=zero"], "field 'epochs'"),
        (SMALL, ["optimizer=adam"], "field 'optimizer'"),
        (
            SMALL,
            ["losses.1.variants=[no-such]"],
            "field 'losses.1.variants': 'pod' has no variant 'no-such'",
        ),
        (
            SMALL,
            ["losses.2.params.q=1"],
            "field 'losses.2.params.q': 'cosface' has no hyperparameter 'q'",
        ),
        (SMALL, ["losses.0.name=softmaxx"], "field 'losses.0.name': unknown loss 'softmaxx'"),
        (SMALL, ["datasets=[cifar11]"], "field 'datasets.0.name': unknown dataset 'cifar11'"),
        (SMALL, ["archs=[resnet51]"], "field 'archs.0': unknown architecture 'resnet51'"),
        (SMALL, ["seeds=0"], "field 'seeds'"),
        (SMALL, ["feat_dim=4", "losses=[pod]"], "field 'losses.0' (pod on digits, feat_dim=4)"),
        (SMALL, ["milestones=[5, 2]"], "field 'milestones'"),
        (SMALL, ["imports=[no_such_module_xyz]"], "field 'imports.0': cannot import module"),
        ("name: [unclosed\n", [], "not valid YAML"),
        ("- a list\n", [], "must be a YAML mapping"),
        (
            "losses: [pod]\ndatasets: [digits]\narchs: [mlp]\n",
            [],
            "field 'name': required field is missing",
        ),
        (SMALL, ["novalue"], "expected key=value"),
    ],
)
def test_malformed_specs_name_the_field(
    tmp_path: Path, text: str, overrides: list[str], needle: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(UserError) as err:
        load_suite(path, overrides)
    assert needle in str(err.value)
    assert str(path) in str(err.value) or "--set" in str(err.value)
    assert "\n" not in str(err.value).strip()  # one sentence, no traceback


def test_cli_exit_2_and_nothing_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _write(tmp_path, SMALL + "lrr: 0.1\n")
    results = tmp_path / "results"
    assert main(["run", str(bad), "--results", str(results)]) == 2
    assert "field 'lrr'" in capsys.readouterr().err
    assert not results.exists()
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2
    assert "no such suite file" in capsys.readouterr().err
    assert main(["validate", "no-such-builtin"]) == 2
    assert main(["run", str(bad), "--set", "lrr=null", "--max-concurrent", "0"]) == 2
    assert not results.exists()


def test_run_with_missing_data_exits_2_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "no-data"
    empty.mkdir()
    results = tmp_path / "results"
    args = ["run", "quickstart", "--results", str(results), "--set", f"data_root={empty}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "field 'datasets.0': dataset 'fashion-mnist' was not found" in err and str(empty) in err
    assert "dataset-fashion-mnist" in err  # how to get it
    assert not results.exists()


def test_validate_accepts_builtin_tune_files(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "tune-quickstart"]) == 0
    assert "valid tune file" in capsys.readouterr().out


def test_console_script_reports_field_path_with_exit_2(tmp_path: Path) -> None:
    bad = _write(tmp_path, SMALL, "bad.yaml")
    exe = Path(sys.executable).with_name("podbench")
    proc = subprocess.run(
        [str(exe), "validate", str(bad), "--set", "batch_size=-1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "field 'batch_size'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("name", sorted(builtin_suites()))
def test_builtin_suites_validate(name: str) -> None:
    # PEDCC's charge model for 200 classes takes ~30 s to build; its values are checked elsewhere
    spec = load_suite(name, build_losses=name != "paper-tinyimagenet")
    assert isinstance(spec, SuiteSpec) and spec.name == name
    runs = spec.expand()
    assert runs and all(r.suite == name for r in runs)
    if name.startswith("paper-"):
        assert {r.loss for r in runs} == {
            "pod",
            "pedcc",
            "softmax",
            "label-smoothing",
            "l-softmax",
            "sphereface",
            "cosface",
            "arcface",
            "center",
            "cot",
        }
        assert {r.arch for r in runs} == {"resnet50"} and {r.epochs for r in runs} == {100}
        assert {(r.optimizer, r.lr, r.momentum, r.weight_decay) for r in runs} == {
            ("sgd", 0.1, 0.9, 5e-4)
        }
        assert {tuple(r.milestones) for r in runs} == {(30, 60, 90)}
    if name == "quickstart":
        assert len(runs) == 15 and {r.dataset for r in runs} == {"fashion-mnist"}
        assert {r.label for r in runs} == {"pod", "softmax", "cosface", "arcface", "pedcc"}


def test_suite_file_round_trips_through_yaml(tmp_path: Path) -> None:
    spec = load_suite(_write(tmp_path, SMALL))
    again = load_suite(_write(tmp_path, yaml.safe_dump(spec.model_dump(mode="json")), "again.yaml"))
    assert [r.run_id for r in again.expand()] == [r.run_id for r in spec.expand()]


def _smallest_holm_wilcoxon_p(n_blocks: int, m: int) -> float:
    """scipy's exact two-sided Wilcoxon p when the control loses in every block (the most
    extreme outcome), times m: Holm's factor on the smallest of m p-values."""
    from scipy.stats import wilcoxon

    diffs = [float(i + 1) for i in range(n_blocks)]  # distinct, all positive
    return m * float(wilcoxon(diffs, method="exact").pvalue)


@pytest.mark.parametrize("name", ["cpu-benchmark", "cpu-benchmark-2"])
def test_cpu_benchmark_has_the_blocks_the_tests_across_blocks_need(name: str) -> None:
    spec = load_suite(name)
    runs = spec.expand()
    methods = {r.label for r in runs}
    assert methods >= {"pod", "pedcc", "softmax", "cosface", "arcface"}
    blocks = {(r.dataset, r.arch) for r in runs}
    assert {d for d, _ in blocks} == {"fashion-mnist", "digits", "cifar10"}
    m = len(methods) - 1  # each method against the control, POD
    alpha = 0.05
    assert _smallest_holm_wilcoxon_p(len(blocks), m) < alpha
    # hand-worked: 4 comparisons need 8 blocks (4 * 2/2^8 = 0.03125; 7 blocks: 0.0625)
    assert m == 4 and _smallest_holm_wilcoxon_p(7, m) == pytest.approx(0.0625)
    # every block complete: every method, every seed (at least 3 for the seed-power analysis)
    assert len(spec.seeds) >= 3
    assert len(runs) == len(blocks) * len(methods) * len(spec.seeds)


# ---------------------------------------------------------------------------- one setting per method

PLAIN = """
name: plain
losses: [pod, softmax]
datasets: [digits]
archs: [mlp]
feat_dim: 16
seeds: 2
epochs: 2
"""


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """stderr of a CLI call that must exit 2 with one line and no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


def test_a_feat_dim_grid_is_one_method_per_size_in_validate_and_the_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, PLAIN)
    assert main(["validate", str(path), "--set", "feat_dim=[12, 16]"]) == 0
    out = capsys.readouterr().out
    assert (
        "4 method(s) (pod[feat_dim=12], pod[feat_dim=16], softmax[feat_dim=12], "
        "softmax[feat_dim=16])" in out
    )
    runs = load_suite(path, ["feat_dim=[12, 16]"], build_losses=False).expand()
    cells: dict[str, list[tuple[int, int]]] = {}
    for r in runs:
        cells.setdefault(r.label, []).append((r.feat_dim, r.seed))
    # the old code pooled both sizes under `pod`: seeds [0, 0, 1, 1]
    assert cells["pod[feat_dim=12]"] == [(12, 0), (12, 1)]
    assert cells["softmax[feat_dim=16]"] == [(16, 0), (16, 1)]


@pytest.mark.parametrize(
    ("losses", "needle"),
    [
        (
            "[{name: pod, label: mine}, {name: softmax, label: mine}]",
            "field 'losses.1.label': 'mine' is already the method of losses.0; give each loss "
            "entry its own label.",
        ),
        (
            "[{name: cosface, params: {m: 0.2}}, {name: cosface, params: {m: 0.5}}]",
            "field 'losses.1': loss 'cosface' is listed again (as losses.0) and both would be "
            "reported as the one method 'cosface'; give one of them a label (e.g. label: "
            "cosface-b), or merge them into one entry with a grid.",
        ),
    ],
)
def test_two_loss_entries_of_one_method_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], losses: str, needle: str
) -> None:
    err = _refused(["validate", str(_write(tmp_path, PLAIN)), "--set", f"losses={losses}"], capsys)
    assert needle in err


def test_a_dataset_listed_twice_with_other_settings_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    both = "datasets=[digits, {name: digits, epochs: 5}]"
    err = _refused(["validate", str(_write(tmp_path, PLAIN)), "--set", both], capsys)
    assert (
        "method 'pod' on digits / mlp would pool runs of different settings as its seeds "
        "(epochs 2 vs 5, milestones [1] vs [2, 3, 4])" in err
    )
    assert "give each setting its own label" in err


@pytest.mark.parametrize("value", ["1e9", "1000000000", "[16, 1.0e+9]"])
def test_a_huge_feat_dim_is_refused_before_a_loss_is_built(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    path = _write(tmp_path, PLAIN.replace("feat_dim: 16", f"feat_dim: {value}"))
    err = _refused(["validate", str(path)], capsys)
    # 10 classes x 10**9 float32 centres = 40 GB: what the old validate tried to allocate
    assert "field 'feat_dim': feat_dim 1000000000 is above 65536" in err
    assert "40.0 GB for 10 classes" in err and "use a smaller feat_dim" in err


def _recorded(results: Path, runs: list[RunSpec]) -> None:
    """Completed records of ``runs`` as `podbench run` writes them."""
    from podbench.record import RunRecord
    from podbench.results import ResultsStore

    store = ResultsStore(results)
    for run in runs:
        store.write_record(RunRecord.of_run(run, status="completed", final_test_acc=0.5))


def test_run_refuses_to_join_a_method_of_other_settings_in_the_results_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, results = _write(tmp_path, PLAIN), tmp_path / "out"
    _recorded(results, load_suite(path, build_losses=False).expand())
    # the same settings again: every run is done, nothing starts (so it asks no CPUs of Ray)
    assert (
        main(
            [
                "run",
                str(path),
                "--results",
                str(results),
                "--no-report",
                "--num-cpus",
                "1",
                "--set",
                "cpus=64",
            ]
        )
        == 0
    )
    assert "already have records" in capsys.readouterr().out
    err = _refused(["run", str(path), "--results", str(results), "--set", "epochs=3"], capsys)
    assert (
        f"method 'pod' on digits / mlp already has runs in {results} with other settings "
        "(epochs 2 vs 3, milestones [1] vs [1, 2])" in err
    )
    assert "give the loss its own label, or use another --results folder" in err
    # under its own label the new setting is a method of its own
    own = ["losses=[{name: pod, label: pod-3}, {name: softmax, label: softmax-3}]", "epochs=3"]
    from podbench.runs import check_joins_results

    check_joins_results(load_suite(path, own, build_losses=False).expand(), results, str(path))


def test_a_run_asking_for_more_cpus_than_ray_has_is_refused_before_ray_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, PLAIN)
    err = _refused(
        ["run", str(path), "--results", str(tmp_path / "r"), "--num-cpus", "1", "--set", "cpus=2"],
        capsys,
    )
    assert (
        "field 'cpus': each run asks for 2 CPUs, more than any node of the embedded Ray on "
        "this machine (1 CPUs, --num-cpus 1; " in err
    )
    assert (
        "has, so it would wait forever; lower it (--set cpus=1), raise --num-cpus to 2, or "
        "give --address of a larger cluster." in err
    )
    assert not (tmp_path / "r").exists()  # nothing written


def test_a_gpu_run_on_a_machine_without_gpu_is_refused_with_the_cpu_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # this machine shows Ray no GPU
    path = _write(tmp_path, PLAIN)
    err = _refused(
        ["run", str(path), "--results", str(tmp_path / "r"), "--num-cpus", "1", "--set", "gpus=1"],
        capsys,
    )
    assert (
        "field 'gpus': each run asks for 1 GPU, more than any node of the embedded Ray on "
        "this machine (1 CPUs, --num-cpus 1; 0 GPUs) has, so it would wait forever; train on "
        "the CPU with --set gpus=0 --set device=cpu, or give --address of a Ray cluster with "
        "GPUs." in err
    )


def test_a_run_needing_cpus_and_a_gpu_on_one_node_of_a_cluster() -> None:
    from podbench.resources import Capacity, check_resources
    from podbench.runs import RunSettings

    # two nodes: 8 CPUs without GPU, 2 CPUs with one; a run of 4 CPUs and 1 GPU fits neither
    cluster = Capacity(((8.0, 0.0), (2.0, 1.0)), "the Ray cluster at h:1", embedded=False)
    check_resources([RunSettings(cpus=2, gpus=1), RunSettings(cpus=8)], cluster, "s.yaml")
    with pytest.raises(
        UserError,
        match="fields 'cpus' and 'gpus': each run asks for 4 CPUs and 1 "
        "GPU on one node, but no node of the Ray cluster at h:1 has both",
    ):
        check_resources([RunSettings(cpus=4, gpus=1)], cluster, "s.yaml")
    with pytest.raises(
        UserError,
        match=r"asks for 9 CPUs, more than any node of the Ray cluster at "
        r"h:1 has.*lower it \(--set cpus=8\), or give --address",
    ):
        check_resources([RunSettings(cpus=9)], cluster, "s.yaml")


def test_report_refuses_a_folder_that_pools_two_settings_of_one_method(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a folder written before labels were checked: pod's seed 0 at 2 epochs, seed 1 at 3 epochs
    path, results = _write(tmp_path, PLAIN), tmp_path / "out"
    runs = load_suite(path, build_losses=False).expand()
    three = load_suite(path, ["epochs=3"], build_losses=False).expand()
    mixed = [r for r in runs if not (r.loss == "pod" and r.seed == 1)]
    mixed += [r for r in three if r.loss == "pod" and r.seed == 1]
    assert len(mixed) == len(runs) == 4
    _recorded(results, mixed)
    err = _refused(["report", str(results)], capsys)
    assert (
        "method 'pod' on digits / mlp would pool runs of different settings as its seeds "
        "(epochs 2 vs 3" in err
    )
    assert "rerun the odd ones under a label of their own" in err
    # one setting per method: the same folder without the odd run reports
    (results / "runs" / f"{mixed[-1].run_id}.json").unlink()
    _recorded(results, [r for r in runs if r.loss == "pod" and r.seed == 1])
    from podbench.reports.records import load_results

    assert len(load_results(results).records) == 4


def test_cpu_benchmark_2_gives_fastnet_its_recipe_and_the_others_the_suites_sgd() -> None:
    runs = load_suite("cpu-benchmark-2").expand()
    fast = [r for r in runs if r.arch == "fastnet"]
    others = [r for r in runs if r.arch != "fastnet"]
    assert fast and {
        (r.lr, r.momentum, r.nesterov, r.weight_decay, r.batch_size) for r in fast
    } == {(1.5 * 512 / 1024, 0.85, True, 1.33e-3, 512)}  # fast-cifar10's lr per 1024 images, scaled
    assert {(r.lr, r.momentum, r.nesterov, r.weight_decay) for r in others} == {
        (0.05, 0.9, False, 5e-4)
    }
    assert {(r.amp, r.channels_last, r.cpus) for r in runs} == {("bf16", "auto", 1.0)}
    # full training sets: Fashion-MNIST for both networks, CIFAR-10 for fastnet; 32 px CIFAR-10
    assert {r.limit_train for r in runs if r.dataset == "fashion-mnist"} == {None}
    assert {r.limit_train for r in fast} == {None}
    assert {r.image_size for r in runs if r.dataset == "cifar10"} == {None}
    # every block trains on at least 4x the images it evaluates per epoch (evaluation < 10 %)
    sizes = {"digits": (1437, 360), "fashion-mnist": (60000, 10000), "cifar10": (50000, 10000)}
    for r in runs:
        train, test = sizes[r.dataset]
        assert min(r.limit_train or train, train) >= 3.99 * min(r.limit_eval or test, test)


def test_cpu_benchmark_2_fp32_is_its_cifar10_small_cnn_block_in_float32() -> None:
    def key(run: RunSpec) -> tuple:
        return (run.label, run.seed)

    bf16 = {
        key(r): r
        for r in load_suite("cpu-benchmark-2").expand()
        if (r.dataset, r.arch) == ("cifar10", "small-cnn")
    }
    fp32 = {key(r): r for r in load_suite("cpu-benchmark-2-fp32").expand()}
    assert len(fp32) == 15 and set(fp32) == set(bf16)
    for k, run in fp32.items():
        assert run.amp == "off" and bf16[k].amp == "bf16"
        assert run.model_copy(update={"amp": "bf16", "suite": bf16[k].suite}) == bf16[k]

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
    labels = sorted({r.label for r in runs})
    assert labels == ["cosface[s=16]", "cosface[s=30]", "pod", "pod[no-sc]", "softmax"]
    cos16 = next(r for r in runs if r.label == "cosface[s=16]")
    assert cos16.loss_params == {"m": 0.2, "s": 16}
    assert {r.seed for r in runs} == {0, 1} and {r.feat_dim for r in runs} == {16, 32}
    run = runs[0]
    assert run.batch_size == 128  # digits has no authors' batch size: the fallback
    assert run.milestones == [3, 6, 9]  # the authors' 30/60/90 of 100, scaled to 10 epochs
    assert (run.optimizer, run.lr, run.momentum, run.weight_decay) == ("sgd", 0.1, 0.9, 5e-4)


def test_dataset_entries_set_their_own_archs_and_training_length(tmp_path: Path) -> None:
    text = SMALL.replace("datasets: [digits]", textwrap.dedent("""\
        datasets:
          - {name: digits, archs: [small-cnn, mlp], epochs: 20, limit_train: 300, limit_eval: 90, lr: 0.02}
          - {name: synthetic, batch_size: 32, image_size: 12}"""))
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
        10, None, 50, 0.1, 32)
    assert (synth.image_size, digits.image_size) == (12, None)  # only the entry that sets it
    assert synth.milestones == [3, 6, 9]  # the suite's 10 epochs


def test_dataset_archs_are_checked_with_their_field_path(tmp_path: Path) -> None:
    path = _write(tmp_path, SMALL.replace("datasets: [digits]", "datasets: [{name: digits, archs: [resnet51]}]"))
    with pytest.raises(UserError, match=r"field 'datasets\.0\.archs\.0': unknown architecture 'resnet51'"):
        load_suite(path)


def test_authors_dataset_defaults_fill_batch_and_latent_dim() -> None:
    spec = load_suite("paper-cifar10", build_losses=False)
    run = spec.expand()[0]
    assert (run.batch_size, run.feat_dim, run.arch, run.epochs) == (200, 256, "resnet50", 100)
    assert run.milestones == [30, 60, 90]
    run100 = load_suite("paper-cifar100", build_losses=False).expand()[0]
    assert (run100.batch_size, run100.feat_dim) == (128, 512)
    pedcc = [r for r in load_suite("paper-cifar100", build_losses=False).expand() if r.loss == "pedcc"]
    assert {r.variant for r in pedcc} == {"cifar100"} and {r.label for r in pedcc} == {"pedcc"}


def test_run_id_covers_result_fields_only() -> None:
    run = load_suite("quickstart").expand()[0]
    assert len(run.run_id) == 16 and int(run.run_id, 16) >= 0
    same = run.model_copy(update={"suite": "x", "cpus": 4.0, "gpus": 0.5, "checkpoint": True,
                                  "label": "other"})
    assert RunSpec.model_validate(same.model_dump()).run_id == run.run_id
    for change in ({"seed": 7}, {"lr": 0.2}, {"loss_params": {"sc_weight": 2.0}}, {"epochs": 4},
                   {"variant": "no-sc"}, {"limit_train": 100}):
        assert RunSpec.model_validate({**run.model_dump(), **change}).run_id != run.run_id


def test_run_id_is_stable_across_processes() -> None:
    code = "from podbench.suite_spec import load_suite; print(load_suite('quickstart').expand()[4].run_id)"
    ids = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={"PYTHONHASHSEED": str(seed), "PATH": "/usr/bin:/bin"}).stdout.strip()
        for seed in (12345,)
    }
    assert len(ids) == 1 and ids == {load_suite("quickstart").expand()[4].run_id}


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
        ["epochs=2", "seeds=[5]", "losses.0.variant=null", "losses.1.variants=[no-nac]",
         "datasets=[synthetic]", "feat_dim=8", "lr=0.01"],
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
        (SMALL, ["losses.1.variants=[no-such]"], "field 'losses.1.variants': 'pod' has no variant 'no-such'"),
        (SMALL, ["losses.2.params.q=1"], "field 'losses.2.params.q': 'cosface' has no hyperparameter 'q'"),
        (SMALL, ["losses.0.name=softmaxx"], "field 'losses.0.name': unknown loss 'softmaxx'"),
        (SMALL, ["datasets=[cifar11]"], "field 'datasets.0.name': unknown dataset 'cifar11'"),
        (SMALL, ["archs=[resnet51]"], "field 'archs.0': unknown architecture 'resnet51'"),
        (SMALL, ["seeds=0"], "field 'seeds'"),
        (SMALL, ["feat_dim=4", "losses=[pod]"], "field 'losses.0' (pod on digits, feat_dim=4)"),
        (SMALL, ["milestones=[5, 2]"], "field 'milestones'"),
        (SMALL, ["imports=[no_such_module_xyz]"], "field 'imports.0': cannot import module"),
        ("name: [unclosed\n", [], "not valid YAML"),
        ("- a list\n", [], "must be a YAML mapping"),
        ("losses: [pod]\ndatasets: [digits]\narchs: [mlp]\n", [], "field 'name': required field is missing"),
        (SMALL, ["novalue"], "expected key=value"),
    ],
)
def test_malformed_specs_name_the_field(tmp_path: Path, text: str, overrides: list[str], needle: str) -> None:
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


def test_run_with_missing_data_exits_2_before_writing(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
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
    proc = subprocess.run([str(exe), "validate", str(bad), "--set", "batch_size=-1"],
                          capture_output=True, text=True, check=False)
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
            "pod", "pedcc", "softmax", "label-smoothing", "l-softmax", "sphereface", "cosface",
            "arcface", "center", "cot"}
        assert {r.arch for r in runs} == {"resnet50"} and {r.epochs for r in runs} == {100}
        assert {(r.optimizer, r.lr, r.momentum, r.weight_decay) for r in runs} == {("sgd", 0.1, 0.9, 5e-4)}
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


def test_cpu_benchmark_2_gives_fastnet_its_recipe_and_the_others_the_suites_sgd() -> None:
    runs = load_suite("cpu-benchmark-2").expand()
    fast = [r for r in runs if r.arch == "fastnet"]
    others = [r for r in runs if r.arch != "fastnet"]
    assert fast and {(r.lr, r.momentum, r.nesterov, r.weight_decay, r.batch_size) for r in fast} == {
        (1.5 * 512 / 1024, 0.85, True, 1.33e-3, 512)}  # fast-cifar10's lr per 1024 images, scaled
    assert {(r.lr, r.momentum, r.nesterov, r.weight_decay) for r in others} == {
        (0.05, 0.9, False, 5e-4)}
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

    bf16 = {key(r): r for r in load_suite("cpu-benchmark-2").expand()
            if (r.dataset, r.arch) == ("cifar10", "small-cnn")}
    fp32 = {key(r): r for r in load_suite("cpu-benchmark-2-fp32").expand()}
    assert len(fp32) == 15 and set(fp32) == set(bf16)
    for k, run in fp32.items():
        assert run.amp == "off" and bf16[k].amp == "bf16"
        assert run.model_copy(update={"amp": "bf16", "suite": bf16[k].suite}) == bf16[k]

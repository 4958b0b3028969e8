"""The loading pipeline shared by suite and tune files, through the CLI where a user meets it.

`imports:` in both kinds of file, unreadable files (one sentence, exit 2, nothing written), the
run_id staying put when the data folder moves, and the same Ray address and results folder in
every verb.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from podbench.cli import main
from podbench.errors import UserError
from podbench.runs import RunSettings, resolve_run
from podbench.suite_spec import load_suite

PLUGIN = """
from podbench.losses import register_loss
from podbench.losses.softmax import SoftmaxLoss


@register_loss("imported-scaled", description="softmax with a scale, registered by an import",
               search_space={"scale": {"type": "float", "low": 0.5, "high": 2.0}})
class ScaledSoftmax(SoftmaxLoss):
    def __init__(self, num_classes, feat_dim, *, scale=1.0):
        super().__init__(num_classes, feat_dim)
        self.scale = scale
"""

SUITE = {
    "name": "imported",
    "losses": [{"name": "imported-scaled", "params": {"scale": 1.5}}, "softmax"],
    "datasets": ["digits"],
    "archs": ["mlp"],
    "feat_dim": 16,
    "epochs": 2,
}
TUNE = {
    "name": "imported",
    "dataset": "digits",
    "arch": "mlp",
    "feat_dim": 16,
    "epochs": 2,
    "n_trials": 2,
    "early_stopping": {"enabled": False},
    "losses": {"imported-scaled": {"space": {"scale": {"high": 1.5}}}, "softmax": {}},
}
# validates a file without `imports:`, then with it, in one fresh interpreter (no other plugins)
TWICE = (
    "import sys; from podbench.cli import main; "
    "print('codes', main(['validate', sys.argv[1]]), main(['validate', sys.argv[2]]))"
)


@pytest.mark.parametrize(("kind", "spec"), [("suite", SUITE), ("tune", TUNE)])
def test_a_module_named_in_imports_registers_a_usable_loss(
    tmp_path: Path, kind: str, spec: dict
) -> None:
    (tmp_path / "scaled_plugin.py").write_text(PLUGIN)
    without = tmp_path / f"{kind}-without.yaml"
    without.write_text(yaml.safe_dump(spec))
    with_import = tmp_path / f"{kind}-with.yaml"
    with_import.write_text(yaml.safe_dump({**spec, "imports": ["scaled_plugin"]}))
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", TWICE, str(without), str(with_import)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "codes 2 0" in proc.stdout, (proc.stdout, proc.stderr)
    # without the import the loss is unknown, and the message names the field
    field = "losses.0.name" if kind == "suite" else "losses.imported-scaled"
    assert f"field '{field}': unknown loss 'imported-scaled'" in proc.stderr
    assert f"{with_import}: valid {kind}" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_an_imported_hyperparameter_is_checked_like_a_builtin_one(tmp_path: Path) -> None:
    (tmp_path / "scaled_plugin.py").write_text(PLUGIN)
    bad = {
        **TUNE,
        "imports": ["scaled_plugin"],
        "losses": {"imported-scaled": {"params": {"scal": 1.0}}},
    }
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(bad))
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "podbench", "validate", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2
    assert (
        "field 'losses.imported-scaled.params.scal': 'imported-scaled' has no "
        "hyperparameter 'scal'; use one of scale"
    ) in proc.stderr


# ---------------------------------------------------------------------------- unreadable files

UNREADABLE = {
    "binary": (b"name: x\n\x00\x01\x02", "is a binary file, not text"),
    "latin-1": ("name: café\n".encode("latin-1"), "is not UTF-8 text"),
    "folder": (None, "is a folder, not a file"),
    "no permission": (b"name: x\n", "cannot be read (permission denied)"),
}


def _unreadable(tmp_path: Path, case: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    content, phrase = UNREADABLE[case]
    path = tmp_path / "spec.yaml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    if case == "no permission":
        # tests run as root, whom chmod 0 does not stop: refuse the read as the OS would
        path.chmod(0)
        real = Path.read_bytes

        def refuse(self: Path) -> bytes:
            if self == path:
                raise PermissionError(13, "Permission denied", str(self))
            return real(self)

        monkeypatch.setattr(Path, "read_bytes", refuse)
    return path, phrase


@pytest.mark.parametrize("case", sorted(UNREADABLE))
@pytest.mark.parametrize(
    ("verb", "what"),
    [("validate", "suite or tune file"), ("run", "suite file"), ("tune", "tune file")],
)
def test_unreadable_spec_file_is_one_sentence_exit_2_nothing_written(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    case: str,
    verb: str,
    what: str,
) -> None:
    path, phrase = _unreadable(tmp_path, case, monkeypatch)
    results = tmp_path / "results"
    argv = [verb, str(path)] + ([] if verb == "validate" else ["--results", str(results)])
    monkeypatch.chdir(tmp_path)  # the default results folder would be made here
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    if case == "folder" and verb == "validate":
        what = "suite file"  # a folder is no tune file, so it is read as a suite
    assert err.startswith(f"podbench {verb}: error: {what} {path} {phrase}")
    assert err.count("\n") == 0 and err.endswith(".") and "Traceback" not in captured.out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]  # nothing written


def test_file_in_a_folder_that_cannot_be_entered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "locked" / "suite.yaml"
    real_stat = Path.stat

    def refuse(self: Path, **kwargs: object) -> os.stat_result:  # what stat() meets there
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "stat", refuse)
    for verb in ("validate", "run", "tune"):
        assert main([verb, str(path)]) == 2
        err = capsys.readouterr().err
        assert "cannot be read (permission denied)" in err and str(path) in err, err


# ---------------------------------------------------------------------------- run_id


def test_moving_the_data_folder_keeps_run_ids(tmp_path: Path) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump(SUITE | {"losses": ["pod", "softmax"], "seeds": 2}))
    here = load_suite(suite, [f"data_root={tmp_path / 'a'}"]).expand()
    there = load_suite(
        suite,
        [
            "datasets=[{name: digits, data_root: /mnt/elsewhere}]",
            "device=cuda",
            "cpus=4",
            "gpus=0.5",
            "checkpoint=true",
            "channels_last=true",
            "compile=true",
        ],
    ).expand()
    assert {r.data_root for r in here} != {r.data_root for r in there}
    assert [r.run_id for r in here] == [r.run_id for r in there]
    lr = load_suite(suite, [f"data_root={tmp_path / 'a'}", "lr=0.05"]).expand()
    assert all(a.run_id != b.run_id for a, b in zip(here, lr, strict=True))
    amp = load_suite(suite, ["amp=bf16"]).expand()  # lower precision does change the result
    assert all(a.run_id != b.run_id for a, b in zip(here, amp, strict=True))


def test_run_ids_made_before_the_change_still_match() -> None:
    # the id this run had when data_root, device, channels_last and compile were still hashed
    # (computed with the earlier code): finished results folders do not rerun their runs
    run = resolve_run(
        RunSettings(epochs=3, lr=0.05, schedule="constant"),
        suite="s",
        loss="pod",
        dataset="digits",
        arch="mlp",
        seed=1,
        feat_dim=16,
        batch_size=64,
        loss_params={"sc_weight": 2.0},
    )
    assert run.run_id == "4b16644c4a0f6c13"
    moved = run.model_copy(update={"data_root": "/x", "device": "cuda"})
    assert moved.run_id == "4b16644c4a0f6c13"
    # the id is sha256 of the sorted, compact JSON of the fields that determine the result
    fields = json.loads(run.model_dump_json())
    for name in ("suite", "label", "imports", "cpus", "gpus", "checkpoint"):
        del fields[name]
    # fields added later (probes, label noise, open set, airbench's recipe) are left out while
    # at their defaults
    for name in (
        "evaluate",
        "label_noise",
        "open_set",
        "warmup",
        "drop_last",
        "augmentation",
        "lookahead",
        "tta",
        "proj",
    ):
        del fields[name]
    assert fields.pop("deterministic") is True  # added later too: hashed only away from True
    # not results, hashed at their old defaults whatever their value (channels_last is now "auto")
    assert fields["channels_last"] == "auto"
    fields.update(data_root=None, device="auto", channels_last=False, compile=False)
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == run.run_id
    # fastest (nondeterministic) kernels are another result: another id, hashed with the field
    fast = run.model_copy(update={"deterministic": False})
    text = json.dumps({**fields, "deterministic": False}, sort_keys=True, separators=(",", ":"))
    assert fast.run_id == hashlib.sha256(text.encode()).hexdigest()[:16] != run.run_id


def test_tune_fingerprint_ignores_where_data_lives_and_where_trials_run() -> None:
    from podbench.tuning import TuneSpec

    base = TuneSpec.model_validate(TUNE | {"losses": {"softmax": {}}})
    moved = TuneSpec.model_validate(
        base.model_dump()
        | {"data_root": "/elsewhere", "device": "cpu", "cpus": 3, "imports": ["json"]}
    )
    assert moved.fingerprint("softmax") == base.fingerprint("softmax")
    other = TuneSpec.model_validate(base.model_dump() | {"limit_train": 100})
    assert other.fingerprint("softmax") != base.fingerprint("softmax")


# ---------------------------------------------------------------------------- the same CLI


def test_run_and_tune_both_use_ray_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import podbench.ray_cluster

    asked: list[tuple[str | None, int | None]] = []

    def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
        asked.append((address, num_cpus))
        raise UserError("stopped here by the test")

    monkeypatch.setattr(podbench.ray_cluster, "init_ray", init_ray)
    monkeypatch.setenv("RAY_ADDRESS", "10.1.2.3:6379")
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump(SUITE | {"losses": ["softmax"]}))
    tune = tmp_path / "tune.yaml"
    tune.write_text(yaml.safe_dump(TUNE | {"losses": {"softmax": {}}}))
    assert main(["run", str(suite), "--results", str(tmp_path / "r1"), "--num-cpus", "2"]) == 2
    assert main(["tune", str(tune), "--results", str(tmp_path / "r2"), "--num-cpus", "2"]) == 2
    assert asked == [("10.1.2.3:6379", 2), ("10.1.2.3:6379", 2)]
    assert capsys.readouterr().err.count("stopped here by the test") == 2
    # --address wins over the environment, in both verbs alike
    asked.clear()
    main(["run", str(suite), "--results", str(tmp_path / "r1"), "--address", "auto"])
    main(["tune", str(tune), "--results", str(tmp_path / "r2"), "--address", "auto"])
    assert asked == [("auto", None), ("auto", None)]


def test_tune_checks_the_data_is_present_like_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    empty = tmp_path / "no-data"
    empty.mkdir()
    results = tmp_path / "results"
    assert (
        main(["tune", "tune-quickstart", "--results", str(results), "--set", f"data_root={empty}"])
        == 2
    )
    err = capsys.readouterr().err
    assert "field 'dataset': dataset 'fashion-mnist' was not found" in err and str(empty) in err
    assert "set data_root to its folder" in err
    assert not results.exists()


@pytest.mark.parametrize("verb", ["results", "report"])
def test_results_folder_is_given_with_results_in_every_verb(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], verb: str
) -> None:
    folder = tmp_path / "not-results"
    folder.mkdir()
    # both forms reach the same folder (an empty one: the same one-sentence refusal)
    assert main([verb, "--results", str(folder)]) == 2
    by_flag = capsys.readouterr().err
    assert main([verb, str(folder)]) == 2
    assert capsys.readouterr().err == by_flag and str(folder) in by_flag
    assert main([verb]) == 2
    assert "add --results DIR" in capsys.readouterr().err
    assert main([verb, str(folder), "--results", str(tmp_path)]) == 2
    assert "given twice" in capsys.readouterr().err


def test_every_verb_documents_results_the_same_way(capsys: pytest.CaptureFixture[str]) -> None:
    for verb in ("run", "tune", "results", "report"):
        with pytest.raises(SystemExit) as done:
            main([verb, "--help"])
        assert done.value.code == 0
        assert "--results DIR" in capsys.readouterr().out, verb


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_an_alias_is_a_valid_name_in_suite_and_tune_files(tmp_path: Path) -> None:
    # am-softmax is CosFace's alias (podbench losses lists it beside cosface)
    assert main(["validate", str(_write(tmp_path, {**SUITE, "losses": ["am-softmax"]}))]) == 0
    tune = {**TUNE, "losses": {"am-softmax": {}, "softmax": {}}}
    assert main(["validate", str(_write(tmp_path, tune))]) == 0


@pytest.mark.parametrize(
    ("field", "wrong", "meant"),
    [
        ("losses", "arcfce", "arcface"),
        ("datasets", "digit", "digits"),
        ("archs", "small_cnn", "small-cnn"),
    ],
)
def test_an_unknown_name_gets_the_closest_registered_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str, wrong: str, meant: str
) -> None:
    suite = {**SUITE, "losses": ["softmax"], field: [wrong]}
    assert main(["validate", str(_write(tmp_path, suite))]) == 2
    err = capsys.readouterr().err
    assert "unknown" in err and f"'{wrong}' (did you mean '{meant}'?)" in err
    assert "Traceback" not in err


# ---------------------------------------------------------------------------- inputs a user really writes


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit status and stderr of the real CLI, checked to be one line without a traceback."""
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") <= 1, err
    return code, err


PLAIN = {
    "name": "plain",
    "losses": ["pod", "softmax"],
    "datasets": ["digits"],
    "archs": ["mlp"],
    "feat_dim": 16,
    "epochs": 2,
}
DUPLICATED = """\
name: dup
losses:
  - {name: cosface, params: {m: 0.2, s: 16, m: 0.5}}
datasets: [digits]
archs: [mlp]
feat_dim: 16
epochs: 2
epochs: 5
"""


@pytest.mark.parametrize(
    ("text", "field", "lines"),
    [
        (DUPLICATED.replace("m: 0.5", "k: 1"), "epochs", "(lines 7 and 8)"),
        (DUPLICATED.replace("epochs: 5\n", ""), "losses.0.params.m", "(both on line 3)"),
    ],
)
def test_a_yaml_key_given_twice_is_refused_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, field: str, lines: str
) -> None:
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    assert yaml.safe_load(text)  # what PyYAML alone does: keeps the last value, says nothing
    code, err = _cli(["validate", str(path)], capsys)
    assert code == 2
    assert f"field '{field}' is given twice {lines}" in err and "keep one of them" in err


def test_a_billion_laughs_file_is_refused_at_once(tmp_path: Path) -> None:
    # 10 levels of 10 aliases each: 10**10 values once expanded, a few hundred bytes of YAML
    lines = ["name: lol", 'l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 10)]
    path = tmp_path / "lol.yaml"
    path.write_text("\n".join(lines) + "\n")
    start = time.perf_counter()
    # the timeout only stops a hang (the old code ran past 30 s); it is not the measure
    done = subprocess.run(
        [sys.executable, "-m", "podbench", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    print(
        f"billion laughs refused in {time.perf_counter() - start:.2f} s (interpreter start included)"
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "expands to more than 100000 values through its anchors and aliases" in done.stderr


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (
            ["seeds=1000000000000"],
            "field 'seeds': 1000000000000 seeds make more runs than --max-runs 10000",
        ),
        # 100 x 100 grid points x 6 seeds = 60,000 runs, counted, never built
        (
            [
                f"losses=[{{name: cosface, grid: {{s: {list(range(1, 101))}, "
                f"m: {[i / 1000 for i in range(100)]}}}}}]",
                "seeds=6",
            ],
            "the suite expands to 60,000 runs, more than --max-runs 10000",
        ),
    ],
)
def test_a_huge_grid_is_refused_before_it_is_built(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], overrides: list[str], needle: str
) -> None:
    path = _write(tmp_path, PLAIN)
    args = ["validate", str(path)] + [x for o in overrides for x in ("--set", o)]
    start = time.perf_counter()
    code, err = _cli(args, capsys)
    print(f"refused in {time.perf_counter() - start:.2f} s")
    assert code == 2 and needle in err and "raise --max-runs" in err


def test_max_runs_raises_and_lowers_the_bound(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, PLAIN)  # 2 losses x 3 seeds = 6 runs
    code, err = _cli(["validate", str(path), "--set", "seeds=3", "--max-runs", "5"], capsys)
    assert code == 2 and "expands to 6 runs, more than --max-runs 5" in err
    assert main(["validate", str(path), "--set", "seeds=3", "--max-runs", "6"]) == 0
    assert "with 6 run(s)" in capsys.readouterr().out


def test_an_unwritable_results_folder_is_refused_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if os.geteuid() == 0:  # root writes through any mode bits; /sys refuses even root
        folder = Path("/sys")
    else:
        folder = tmp_path / "read-only"
        folder.mkdir(mode=0o555)
    suite = _write(tmp_path, PLAIN)
    code, err = _cli(["run", str(suite), "--results", str(folder), "--num-cpus", "1"], capsys)
    assert code == 2
    assert (
        f"--results {folder}: cannot write there" in err and "give a folder you can write to" in err
    )


def test_a_huge_bad_value_is_quoted_as_an_excerpt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from podbench.record import RunRecord

    run = load_suite(_write(tmp_path, PLAIN), build_losses=False).expand()[0]
    record = RunRecord.of_run(run, status="completed", final_test_acc=0.5).to_json_dict()
    record["final_test_acc"] = "9" * 20_000_000  # 20 MB where a number belongs
    runs = tmp_path / "r" / "runs"
    runs.mkdir(parents=True)
    (runs / f"{run.run_id}.json").write_text(json.dumps(record))
    code, err = _cli(["results", "--results", str(tmp_path / "r")], capsys)
    assert code == 2
    assert "the field final_test_acc is invalid" in err and "characters left out" in err
    assert len(err) < 1000, len(err)

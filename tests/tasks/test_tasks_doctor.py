"""CPU feature detection from /proc/cpuinfo (fixture files of three real CPUs) and
`podbench doctor`'s report of it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from podbench.cli import main
from podbench.tasks.devices import cpu_features

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.mark.parametrize(
    ("name", "model", "flags"),
    [
        # (amx_bf16, avx512_bf16, avx512, avx2, arm_bf16, the native bf16 instructions)
        # its second processor lists five flags: the first processor's count
        (
            "sapphire-rapids",
            "Intel(R) Xeon(R) Platinum 8480+",
            (True, True, True, True, False, "AMX-BF16"),
        ),
        (
            "haswell",
            "Intel(R) Xeon(R) CPU E5-2680 v3 @ 2.50GHz",
            (False, False, False, True, False, None),
        ),
        ("graviton3", None, (False, False, False, False, True, "Arm BF16")),
    ],
)
def test_cpu_features_read_the_first_processors_flags(
    name: str, model: str | None, flags: tuple
) -> None:
    cpu = cpu_features(FIXTURES / f"cpuinfo-{name}.txt")
    assert cpu.model == model
    assert (
        cpu.amx_bf16,
        cpu.avx512_bf16,
        cpu.avx512,
        cpu.avx2,
        cpu.arm_bf16,
        cpu.bf16_kernels,
    ) == flags


def test_no_cpuinfo_means_no_flags_and_emulated_bf16(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["doctor", "--no-measure", "--cpuinfo", str(tmp_path / "absent")]) == 0
    out = capsys.readouterr().out
    assert "CPU: unknown" in out and "AMX-BF16 no, AVX-512 BF16 no" in out
    assert "no native bf16: amp: bf16 is emulated" in out


def test_doctor_json_reports_the_fixture_flags(capsys: pytest.CaptureFixture[str]) -> None:
    path = FIXTURES / "cpuinfo-sapphire-rapids.txt"
    assert main(["doctor", "--no-measure", "--json", "--cpuinfo", str(path)]) == 0
    report = json.loads(capsys.readouterr().out)
    cpu = report["cpu"]
    assert cpu["model"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert (cpu["amx_bf16"], cpu["avx512_bf16"], cpu["avx2"]) == (True, True, True)
    assert cpu["bf16_kernels"] == "AMX-BF16" and report["bf16_gain"] is None
    assert main(["doctor", "--no-measure", "--cpuinfo", str(FIXTURES / "cpuinfo-haswell.txt")]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert "AMX-BF16 no, AVX-512 BF16 no, AVX-512 no, AVX2 yes" in line


def test_doctor_measures_the_bf16_gain_as_the_ratio_of_its_figures(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    found = re.search(
        r"fp32 (\d+) GFLOP/s, bf16 (\d+) \(x([\d.]+)\); small-cnn training step "
        r"fp32 (\d+) images/s, bf16 (\d+) \(x([\d.]+)\)",
        out,
    )
    assert found, out
    mm32, mm16, mm_ratio, net32, net16, net_ratio = map(float, found.groups())
    # the ratios printed are those of the printed (rounded) figures
    assert mm_ratio == pytest.approx(mm16 / mm32, rel=0.02, abs=0.01)
    assert net_ratio == pytest.approx(net16 / net32, rel=0.02, abs=0.01)
    assert ("would speed training up" in out) is (net_ratio > 1)


def test_tasks_json_names_the_cpus_bf16_instructions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tasks", "--json"]) == 0
    cpu = json.loads(capsys.readouterr().out)["cpu"]
    expected = cpu_features()  # this machine's /proc/cpuinfo, read again
    assert cpu["avx512_bf16"] is ("avx512_bf16" in expected.flags)
    assert cpu["amx_bf16"] is ("amx_bf16" in expected.flags)
    assert cpu["capability"] == torch.backends.cpu.get_cpu_capability()

"""Telemetry on stand-ins: a fake RAPL sysfs tree and a fake NVML (neither exists in this
container; the real RAPL and NVML are read the same way, through the same paths and calls)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from deploy_fakes import FakeNvml, rapl_tree, set_energy

from ai_vmm.deploy.telemetry import (
    CPU_WATTS_PER_CORE,
    RaplDomain,
    Telemetry,
    Window,
    find_nvml,
    find_rapl,
    throttle_names,
)


def test_rapl_sums_packages_and_handles_wrap_around(tmp_path: Path) -> None:
    root = rapl_tree(tmp_path / "powercap", {0: (1_000_000, 10_000_000), 1: (500, 10_000_000)})
    meter, note = find_rapl(root)
    assert note is None and meter is not None
    assert [d.label for d in meter.domains] == ["package-0", "package-1"]  # no core domain
    assert meter.read_j() == 0.0  # first reading: the reference point
    set_energy(root, 0, 3_000_000)
    set_energy(root, 1, 1_500)
    assert meter.read_j() == pytest.approx(2.001)
    # Package 0 wraps: 9.5 J to the top of its range, then 0.25 J past zero.
    set_energy(root, 0, 9_500_000)
    meter.read_j()
    set_energy(root, 0, 250_000)
    assert meter.read_j() == pytest.approx(2.001 + 6.5 + 0.75)


def test_rapl_domain_without_range_never_goes_backwards(tmp_path: Path) -> None:
    root = rapl_tree(tmp_path / "p", {0: (5_000_000, 0)})
    domain = RaplDomain(root / "intel-rapl:0")
    domain.read_j()
    set_energy(root, 0, 1_000)
    assert domain.read_j() == 0.0


def test_rapl_absent_or_unreadable_says_why(tmp_path: Path) -> None:
    meter, note = find_rapl(tmp_path / "missing")
    assert meter is None and "does not exist" in str(note)
    (tmp_path / "empty").mkdir()
    meter, note = find_rapl(tmp_path / "empty")
    assert meter is None and "no intel-rapl" in str(note)
    root = rapl_tree(tmp_path / "locked", {0: (1, 10)})
    (root / "intel-rapl:0" / "energy_uj").unlink()
    (root / "intel-rapl:0" / "energy_uj").mkdir()  # unreadable as a file
    meter, note = find_rapl(root)
    assert meter is None and "energy_uj" in str(note)


def test_nvml_energy_counter_temperature_and_throttle_reasons() -> None:
    fake = FakeNvml(("NVIDIA H200", "NVIDIA H200"))
    gpus, _, note = find_nvml(fake)
    assert note is None and [g.index for g in gpus] == [0, 1]
    gpu = gpus[1]
    assert gpu.has_energy_counter and gpu.gpu_name == "NVIDIA H200"
    start = gpu.read_j()
    fake.energy_mj += 2500.0
    assert gpu.read_j() - start == pytest.approx(2.5)
    extras = gpu.extras()
    assert extras == {"temperature_c": 55, "throttle_reasons": ["sw_power_cap"]}
    assert gpu.power_limit_w() == 700.0


def test_nvml_without_energy_counter_integrates_power_samples() -> None:
    fake = FakeNvml(energy_counter=False, power_w=200.0)
    (gpu,), _, _ = find_nvml(fake)
    assert not gpu.has_energy_counter
    with Window(gpu, cores=2) as window:
        time.sleep(0.25)
    assert window.figure is not None and window.figure.measured
    # 200 W over the window, integrated from 10 ms samples (the edges lose a sample or two).
    assert window.figure.watts == pytest.approx(200.0, rel=0.25)
    assert "power" in fake.calls


def test_nvml_missing_is_a_note_not_an_error() -> None:
    class Broken:
        def nvmlInit(self) -> None:
            raise RuntimeError("NVML Shared Library Not Found")

    gpus, _, note = find_nvml(Broken())
    assert gpus == [] and "Shared Library Not Found" in str(note)


def test_windows_never_change_device_settings() -> None:
    # FakeNvml raises on any nvmlDeviceSet*/Reset* call: reading through a window must not.
    fake = FakeNvml(power_w=450.0)
    telemetry = Telemetry.discover(rapl_root=Path("/nonexistent"), nvml=fake)
    meter = telemetry.meter_for("gpu", 0)
    with Window(meter, cores=2) as window:
        fake.energy_mj += 900.0
    assert window.figure is not None and window.figure.joules == pytest.approx(0.9)
    assert telemetry.meter_for("cpu") is None
    assert any("RAPL" in line for line in telemetry.describe())


def test_estimate_from_process_cpu_time() -> None:
    with Window(None, cores=2) as window:
        end = time.process_time() + 0.1
        while time.process_time() < end:
            pass
    figure = window.figure
    assert figure is not None and not figure.measured and "estimated" in figure.source
    assert 0.0 < window.busy_cores <= 2.0  # a shared machine may give the spin a small share
    assert figure.watts == pytest.approx(window.busy_cores * CPU_WATTS_PER_CORE)


def test_throttle_names() -> None:
    assert throttle_names(0x1) == []
    assert throttle_names(0x4 | 0x40) == ["sw_power_cap", "hw_thermal_slowdown"]

"""Stand-ins for hardware that cannot exist on the test machine: NVML without a GPU, RAPL in a
container. Each mimics the real interface closely enough that the code under test cannot tell.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


def rapl_tree(root: Path, packages: dict[int, tuple[int, int]]) -> Path:
    """A fake ``/sys/class/powercap``: ``intel-rapl:N`` with ``energy_uj`` and its range.

    ``packages`` maps N to (energy_uj, max_energy_range_uj). A sub-domain (``intel-rapl:N:0``,
    the cores) is added to each package: RAPL meters must sum packages only.
    """
    for index, (energy, limit) in packages.items():
        domain = root / f"intel-rapl:{index}"
        domain.mkdir(parents=True)
        (domain / "name").write_text(f"package-{index}\n")
        (domain / "energy_uj").write_text(f"{energy}\n")
        (domain / "max_energy_range_uj").write_text(f"{limit}\n")
        core = root / f"intel-rapl:{index}:0"
        core.mkdir()
        (core / "name").write_text("core\n")
        (core / "energy_uj").write_text("999999999\n")
    return root


def set_energy(root: Path, index: int, energy_uj: int) -> None:
    (root / f"intel-rapl:{index}" / "energy_uj").write_text(f"{energy_uj}\n")


@dataclass
class _Memory:
    total: int
    used: int


class FakeNvml:
    """The slice of ``pynvml`` that ai-vmm calls, over simulated GPUs.

    Power, energy, temperature and throttle reasons are plain attributes a test moves; every
    setter NVML has (power limits, clocks, modes) raises, so a test can prove none was called.
    """

    NVML_TEMPERATURE_GPU = 0

    def __init__(
        self,
        names: tuple[str, ...] = ("NVIDIA H200",),
        *,
        energy_counter: bool = True,
        power_w: float = 300.0,
        limit_w: float = 700.0,
    ) -> None:
        self.names = names
        self.energy_counter = energy_counter
        self.power_w = power_w
        self.limit_w = limit_w
        self.energy_mj = 1_000_000.0
        self.temperature = 55
        self.throttle = 0x1 | 0x4  # idle + software power cap
        self.memory_used = 1 << 30
        self.initialised = False
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        if name.startswith("nvmlDeviceSet") or name.startswith("nvmlDeviceReset"):
            raise AssertionError(f"{name} called: ai-vmm must never change a device setting")
        raise AttributeError(name)

    def nvmlInit(self) -> None:
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.initialised = False

    def nvmlDeviceGetCount(self) -> int:
        return len(self.names)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if not 0 <= index < len(self.names):
            raise ValueError("invalid index")
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return self.names[handle].encode()

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        self.calls.append("power")
        return int(self.power_w * 1000)

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: int) -> int:
        return int(self.limit_w * 1000)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        if not self.energy_counter:
            raise RuntimeError("Not Supported")
        self.calls.append("energy")
        return int(self.energy_mj)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        return self.temperature

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: int) -> int:
        return self.throttle

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> _Memory:
        return _Memory(141 << 30, self.memory_used)

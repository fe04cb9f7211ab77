"""Power and energy telemetry: NVIDIA GPUs through NVML, CPU packages through Intel RAPL.

Both are optional. ``Telemetry.discover()`` finds what this machine reports and says why the
rest is missing (no ``nvidia-ml-py``, no driver, no ``/sys/class/powercap/intel-rapl:*``, a
counter only root may read). A :class:`Meter` reads a cumulative energy counter in joules:

- RAPL: ``energy_uj`` of every package domain, summed. The counter wraps at
  ``max_energy_range_uj``; each domain remembers its last raw reading and adds the range when
  a reading is smaller than the previous one (one wrap between two readings at most: the
  range is minutes of full load).
- NVML: ``nvmlDeviceGetTotalEnergyConsumption`` (millijoules since the driver loaded; Volta and
  later). Older GPUs: a thread samples ``nvmlDeviceGetPowerUsage`` every 10 ms while a window
  is open and integrates it. Temperature and throttle reasons come with each window.

Nothing here ever changes a device setting: no power limit, clock or mode is written. A power
budget chooses among candidates; it does not cap the hardware.

Where nothing reports power, :func:`estimate_cpu_power` gives a figure from the CPU time the
process used (busy cores x a nominal watts per core) and marks it as an estimate.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

RAPL_ROOT = Path("/sys/class/powercap")
CPU_WATTS_PER_CORE = 6.0
"""Nominal power of one busy x86 server core (a 64-core, 280 W part is 4.4 W a core; a 8-core
125 W desktop part 15 W): the estimate used where no counter reports power."""
GPU_WATTS_FALLBACK = 250.0
"""Estimate for an NVIDIA GPU whose power NVML cannot read (its power limit if known)."""
NVML_SAMPLE_S = 0.01

# NVML clock-event (throttle) reason bits, nvml.h.
THROTTLE_REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}


def throttle_names(mask: int) -> list[str]:
    """NVML's throttle-reason bit mask as names (``gpu_idle`` is not a slowdown: left out)."""
    return [name for bit, name in THROTTLE_REASONS.items() if mask & bit and bit != 0x1]


class Meter(Protocol):
    """A cumulative energy counter."""

    name: str

    def read_j(self) -> float:
        """Joules since some fixed point, monotonic (wrap-around handled)."""
        ...

    def extras(self) -> dict[str, Any]:
        """Temperature, throttle reasons ... at this moment (empty where not reported)."""
        ...


# --------------------------------------------------------------------------------------------
# RAPL
# --------------------------------------------------------------------------------------------


class RaplDomain:
    """One RAPL domain's ``energy_uj`` counter with wrap-around handled."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.label = _read(self.path / "name") or self.path.name
        text = _read(self.path / "max_energy_range_uj")
        self.range_uj = int(text) if text and text.isdigit() else 0
        self._lock = threading.Lock()
        self._last_raw: int | None = None
        self._total_uj = 0

    def raw_uj(self) -> int:
        text = _read(self.path / "energy_uj", strict=True)
        return int(text or 0)

    def read_j(self) -> float:
        raw = self.raw_uj()
        with self._lock:
            if self._last_raw is not None:
                delta = raw - self._last_raw
                if delta < 0:
                    # The counter wrapped at max_energy_range_uj since the last reading.
                    delta += self.range_uj if self.range_uj else 0
                    delta = max(delta, 0)
                self._total_uj += delta
            self._last_raw = raw
            return self._total_uj / 1e6


class RaplMeter:
    """Every RAPL package domain, summed: the CPU sockets' energy."""

    def __init__(self, domains: list[RaplDomain]) -> None:
        self.domains = domains
        self.name = "RAPL " + "+".join(d.label for d in domains)

    def read_j(self) -> float:
        return sum(d.read_j() for d in self.domains)

    def extras(self) -> dict[str, Any]:
        return {}


def find_rapl(root: Path = RAPL_ROOT) -> tuple[RaplMeter | None, str | None]:
    """The package domains under ``root`` (``intel-rapl:N``), or why there are none."""
    if not root.is_dir():
        return None, f"RAPL: {root} does not exist (no powercap driver: a VM or a non-x86 host)"
    packages = sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1 and p.is_dir())
    if not packages:
        return None, f"RAPL: no intel-rapl:N domain under {root} (RAPL not exposed here)"
    domains = []
    problems = []
    for path in packages:
        domain = RaplDomain(path)
        try:
            domain.read_j()
        except PermissionError:
            problems.append(f"{path / 'energy_uj'} is readable by root only")
            continue
        except (OSError, ValueError) as exc:
            problems.append(f"{path / 'energy_uj'}: {exc}")
            continue
        domains.append(domain)
    if not domains:
        return None, "RAPL: " + "; ".join(problems)
    return RaplMeter(domains), None


def _read(path: Path, strict: bool = False) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        if strict:
            raise
        return None


# --------------------------------------------------------------------------------------------
# NVML
# --------------------------------------------------------------------------------------------


class NvmlGpu:
    """One NVIDIA GPU seen through NVML: power, energy, temperature, throttle reasons, memory.

    ``nvml`` is the ``pynvml`` module (``nvidia-ml-py``) or anything with the same functions.
    """

    def __init__(self, nvml: Any, index: int) -> None:
        self._nvml = nvml
        self.index = index
        self._handle = nvml.nvmlDeviceGetHandleByIndex(index)
        name = nvml.nvmlDeviceGetName(self._handle)
        self.gpu_name = name.decode() if isinstance(name, bytes) else str(name)
        self.name = f"NVML GPU {index} ({self.gpu_name})"
        self.has_energy_counter = self._energy_mj() is not None
        self._lock = threading.Lock()
        self._sampled_j = 0.0
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()
        self._users = 0

    def power_w(self) -> float | None:
        try:
            return float(self._nvml.nvmlDeviceGetPowerUsage(self._handle)) / 1000.0
        except Exception:
            return None

    def power_limit_w(self) -> float | None:
        try:
            return float(self._nvml.nvmlDeviceGetEnforcedPowerLimit(self._handle)) / 1000.0
        except Exception:
            return None

    def memory_used_bytes(self) -> int | None:
        try:
            return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)
        except Exception:
            return None

    def _energy_mj(self) -> float | None:
        try:
            return float(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except Exception:
            return None

    def read_j(self) -> float:
        if self.has_energy_counter:
            value = self._energy_mj()
            if value is not None:
                return value / 1000.0
        with self._lock:
            return self._sampled_j

    @contextlib.contextmanager
    def sampling(self) -> Any:
        """Integrate power samples while open (only needed without the energy counter)."""
        if self.has_energy_counter:
            yield
            return
        with self._lock:
            self._users += 1
            if self._sampler is None:
                self._stop.clear()
                self._sampler = threading.Thread(
                    target=self._sample, name="ai-vmm-nvml", daemon=True
                )
                self._sampler.start()
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                sampler = self._sampler if self._users == 0 else None
                if sampler is not None:
                    self._sampler = None
                    self._stop.set()
            if sampler is not None:
                sampler.join()

    def _sample(self) -> None:
        last_t = time.perf_counter()
        last_w = self.power_w() or 0.0
        while not self._stop.wait(NVML_SAMPLE_S):
            now, watts = time.perf_counter(), self.power_w() or 0.0
            with self._lock:
                self._sampled_j += (last_w + watts) / 2.0 * (now - last_t)
            last_t, last_w = now, watts

    def extras(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        nvml = self._nvml
        with contextlib.suppress(Exception):
            sensor = getattr(nvml, "NVML_TEMPERATURE_GPU", 0)
            found["temperature_c"] = int(nvml.nvmlDeviceGetTemperature(self._handle, sensor))
        for getter in (
            "nvmlDeviceGetCurrentClocksEventReasons",
            "nvmlDeviceGetCurrentClocksThrottleReasons",
        ):
            function = getattr(nvml, getter, None)
            if function is None:
                continue
            with contextlib.suppress(Exception):
                found["throttle_reasons"] = throttle_names(int(function(self._handle)))
                break
        return found


def find_nvml(module: Any = None) -> tuple[list[NvmlGpu], Any, str | None]:
    """NVML's GPUs (``module``: pynvml or a stand-in), the module, or why there are none."""
    nvml: Any = module
    if nvml is None:
        try:
            import pynvml  # lazily: nvidia-ml-py is an optional dependency
        except Exception as exc:
            return [], None, f"NVML: nvidia-ml-py not importable ({type(exc).__name__})"
        nvml = pynvml
    try:
        nvml.nvmlInit()
    except Exception as exc:
        return [], None, f"NVML: {' '.join(str(exc).split()) or type(exc).__name__}"
    gpus = []
    problems = []
    try:
        count = int(nvml.nvmlDeviceGetCount())
    except Exception as exc:
        return [], nvml, f"NVML: {' '.join(str(exc).split())}"
    for index in range(count):
        try:
            gpus.append(NvmlGpu(nvml, index))
        except Exception as exc:
            problems.append(f"GPU {index}: {' '.join(str(exc).split())}")
    note = None
    if problems:
        note = "NVML could not query " + "; ".join(problems)
    elif not gpus:
        note = "NVML: no NVIDIA GPU"
    return gpus, nvml, note


# --------------------------------------------------------------------------------------------
# Windows: energy and power over a stretch of work
# --------------------------------------------------------------------------------------------


@dataclass
class PowerFigure:
    """Average power and energy over a measurement window."""

    watts: float
    joules: float
    seconds: float
    measured: bool
    source: str
    """``NVML GPU 0 (...)``, ``RAPL package-0``, or how the estimate was made."""
    extras: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "watts": round(self.watts, 2),
            "joules": round(self.joules, 4),
            "seconds": round(self.seconds, 3),
            "measured": self.measured,
            "source": self.source,
            **self.extras,
        }


class Window:
    """Reads a meter (and the process CPU time) at the start and end of a stretch of work."""

    def __init__(self, meter: Meter | None, cores: int) -> None:
        self.meter = meter
        self.cores = cores
        self._t0 = 0.0
        self._cpu0 = 0.0
        self._e0 = 0.0
        self.figure: PowerFigure | None = None
        self.busy_cores = 0.0
        self._sampling: Any = None

    def __enter__(self) -> Window:
        if isinstance(self.meter, NvmlGpu):
            self._sampling = self.meter.sampling()
            self._sampling.__enter__()
        self._e0 = self.meter.read_j() if self.meter is not None else 0.0
        self._cpu0 = time.process_time()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        seconds = max(time.perf_counter() - self._t0, 1e-9)
        cpu = time.process_time() - self._cpu0
        self.busy_cores = min(cpu / seconds, float(self.cores))
        if self.meter is not None:
            joules = max(self.meter.read_j() - self._e0, 0.0)
            extras = self.meter.extras()
            if self._sampling is not None:
                self._sampling.__exit__(None, None, None)
            self.figure = PowerFigure(
                joules / seconds, joules, seconds, True, self.meter.name, extras
            )
        else:
            self.figure = estimate_cpu_power(self.busy_cores, seconds)


def estimate_cpu_power(busy_cores: float, seconds: float) -> PowerFigure:
    """Power where no counter reports it: busy cores x ``CPU_WATTS_PER_CORE``."""
    watts = busy_cores * CPU_WATTS_PER_CORE
    return PowerFigure(
        watts,
        watts * seconds,
        seconds,
        False,
        f"estimated: {busy_cores:.2f} busy cores (process CPU time) x {CPU_WATTS_PER_CORE:g} W "
        "per core; no power counter here",
    )


def combine(figures: list[PowerFigure]) -> PowerFigure | None:
    """Several windows of one contender as one figure (energy and time summed)."""
    if not figures:
        return None
    joules = sum(f.joules for f in figures)
    seconds = sum(f.seconds for f in figures)
    extras: dict[str, Any] = {}
    temps = [f.extras["temperature_c"] for f in figures if "temperature_c" in f.extras]
    if temps:
        extras["temperature_c"] = max(temps)
    reasons = sorted({r for f in figures for r in f.extras.get("throttle_reasons", [])})
    if any("throttle_reasons" in f.extras for f in figures):
        extras["throttle_reasons"] = reasons
    return PowerFigure(
        joules / max(seconds, 1e-9),
        joules,
        seconds,
        all(f.measured for f in figures),
        figures[0].source,
        extras,
    )


@dataclass
class Telemetry:
    """The meters of this machine and why others are missing."""

    rapl: RaplMeter | None = None
    gpus: list[NvmlGpu] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def discover(
        cls, rapl_root: Path = RAPL_ROOT, nvml: Any = None, use_nvml: bool = True
    ) -> Telemetry:
        """Find RAPL under ``rapl_root`` and NVML GPUs (``nvml``: a pynvml stand-in for tests)."""
        rapl, rapl_note = find_rapl(rapl_root)
        gpus: list[NvmlGpu] = []
        nvml_note: str | None = "NVML: not used"
        if use_nvml:
            gpus, _, nvml_note = find_nvml(nvml)
        return cls(rapl, gpus, [n for n in (rapl_note, nvml_note) if n])

    def meter_for(self, kind: str, index: int = 0) -> Meter | None:
        """The meter of a device kind (``cpu``: RAPL; ``gpu``: NVML GPU ``index``)."""
        if kind == "cpu":
            return self.rapl
        if kind == "gpu":
            for gpu in self.gpus:
                if gpu.index == index:
                    return gpu
        return None

    def describe(self) -> list[str]:
        found = []
        if self.rapl is not None:
            found.append(f"{self.rapl.name}: measured CPU package energy")
        found += [f"{g.name}: measured GPU energy" for g in self.gpus]
        return found + self.notes

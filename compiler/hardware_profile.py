"""Hardware profiles: a machine described in JSON, to plan for hardware that is not here.

A profile names the CPU, every device (target, name, kind, cost-model figures with the source
of those numbers, ops the device is known not to run) and the links between devices. Shipped
profiles live in ``compiler/profiles/`` and are named by their stem (``--hardware xeon-nvidia``);
any other path to a JSON file works too. See docs/partitioning.md for the schema.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ai_vmm.cost import DeviceFigures
from ai_vmm.planner import Link
from ai_vmm.runtime.devices import CpuInfo, Device, Inventory
from ai_vmm.runtime.errors import CompileError

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"


@dataclass
class HardwareProfile:
    """Devices with their figures and links; ``present`` is False for a described machine."""

    name: str
    inventory: Inventory
    figures: dict[str, DeviceFigures]
    links: dict[tuple[str, str], Link]
    unsupported_ops: dict[str, frozenset[str]] = field(default_factory=dict)
    present: bool = False


def builtin_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.json"))


def load_profile(spec: str | Path) -> HardwareProfile:
    """Load a shipped profile by name, or a profile file by path.

    Raises:
        CompileError: the file is missing or malformed; the message names the bad field.
    """
    path = Path(spec)
    if not path.suffix and not path.exists():
        path = PROFILES_DIR / f"{spec}.json"
    if not path.is_file():
        raise CompileError(
            f"hardware profile {spec} not found (shipped: {', '.join(builtin_profiles())}, "
            f"or a path to a .json file)"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CompileError(f"hardware profile {path} is not valid JSON: {exc}") from exc
    try:
        return _parse(data, path)
    except (KeyError, TypeError, ValueError) as exc:
        raise CompileError(f"hardware profile {path} is malformed: {exc}") from exc


def _need(data: dict[str, Any], key: str, where: str) -> Any:
    if not isinstance(data, dict) or key not in data:
        raise KeyError(f"{where} has no '{key}'")
    return data[key]


def _parse(data: dict[str, Any], path: Path) -> HardwareProfile:
    cpu_data = _need(data, "cpu", "the profile")
    cpu = CpuInfo(
        model=str(_need(cpu_data, "model", "cpu")),
        vendor=str(cpu_data.get("vendor", "")),
        arch=str(cpu_data.get("arch", "x86_64")),
        physical_cores=int(_need(cpu_data, "physical_cores", "cpu")),
        logical_cores=int(cpu_data.get("logical_cores", cpu_data["physical_cores"])),
        isa=tuple(str(f) for f in cpu_data.get("isa", [])),
        memory_bytes=int(float(cpu_data.get("memory_gb", 0)) * (1 << 30)),
    )
    devices, figures, unsupported = [], {}, {}
    entries = _need(data, "devices", "the profile")
    if not isinstance(entries, list) or not entries:
        raise ValueError("'devices' must be a non-empty list")
    for i, entry in enumerate(entries):
        where = f"devices[{i}]"
        device = Device(
            target=str(_need(entry, "target", where)),
            name=str(_need(entry, "name", where)),
            kind=str(entry.get("kind", "other")),
            full_name=str(entry.get("full_name", "")),
            properties={"profile": data.get("name", path.stem)},
        )
        fig = _need(entry, "figures", where)
        peak = _need(fig, "peak_gflops", f"{where}.figures")
        if not isinstance(peak, dict) or "fp32" not in peak:
            raise ValueError(f"{where}.figures.peak_gflops needs an 'fp32' entry")
        figures[device.key] = DeviceFigures(
            peak_gflops={str(k): float(v) for k, v in peak.items()},
            bandwidth_gbps=float(_need(fig, "bandwidth_gbps", f"{where}.figures")),
            overhead_us=float(_need(fig, "overhead_us", f"{where}.figures")),
            source=str(fig.get("source", f"profile {path.name}")),
        )
        if any(v <= 0 for v in figures[device.key].peak_gflops.values()) or (
            figures[device.key].bandwidth_gbps <= 0
        ):
            raise ValueError(f"{where}.figures must be positive")
        unsupported[device.key] = frozenset(str(op) for op in entry.get("unsupported_ops", []))
        devices.append(device)
    keys = {d.key for d in devices}
    links = {}
    for i, entry in enumerate(data.get("links", [])):
        pair = _need(entry, "between", f"links[{i}]")
        if not isinstance(pair, list) or len(pair) != 2 or not set(pair) <= keys:
            raise ValueError(f"links[{i}].between must name two devices of the profile")
        links[(pair[0], pair[1])] = Link(
            float(_need(entry, "bandwidth_gbps", f"links[{i}]")),
            float(_need(entry, "latency_us", f"links[{i}]")),
        )
    inventory = Inventory(cpu=cpu, devices=tuple(devices), notes=(f"profile {path.name}",))
    return HardwareProfile(
        name=str(data.get("name", path.stem)),
        inventory=inventory,
        figures=figures,
        links=links,
        unsupported_ops=unsupported,
    )

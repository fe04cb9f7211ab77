"""The driver: options, devices, the compile cache; then the pipeline and the artifact.

    check the output path -> discover devices (or read a hardware profile) -> resolve --target
    -> cache lookup -> load -> --input shapes -> ``ai_vmm.pipeline.run`` (every stage after
    loading: docs/architecture.md) -> write the artifact, checked through the runtime (+ cache)

Every decision lands in ``report.json``; the manifest holds only what the runtime needs and is
byte-for-byte reproducible.
"""

from __future__ import annotations

import importlib.metadata
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import onnx_ir as ir

from ai_vmm import hardware, pipeline, registry
from ai_vmm.cache import CompileCache, cache_key, cache_root
from ai_vmm.frontends import LoadedModel, load_model, source_digest
from ai_vmm.hardware_profile import HardwareProfile, load_profile
from ai_vmm.options import CompileOptions, validate_options
from ai_vmm.pipeline import Machine
from ai_vmm.runtime.artifact import MANIFEST, check_output_path, copy_artifact, read_report
from ai_vmm.runtime.devices import Device, Inventory
from ai_vmm.runtime.errors import CompileError, DeviceError
from ai_vmm.runtime.staging import build_directory
from ai_vmm.signature import apply_input_shapes, parse_input_specs
from ai_vmm.targets.base import save_onnx

__all__ = ["CompileOptions", "CompileResult", "compile_model", "resolve_targets", "toolchain"]

Progress = Callable[[str], None]


@dataclass
class CompileResult:
    """Where the artifact went, and what the compile decided."""

    path: Path
    manifest: dict[str, Any]
    report: dict[str, Any]
    cache_hit: bool = False


def compile_model(
    source: Any,
    output: str | Path | None = None,
    options: CompileOptions | None = None,
    *,
    cache_dir: str | Path | None = None,
    progress: Progress | None = None,
    frontend_options: dict[str, Any] | None = None,
    force: bool = False,
) -> CompileResult:
    """Compile a model (ONNX path or ``ModelProto``, or what a frontend takes) into an artifact.

    ``force``: replace whatever is at ``output`` even when it is not an ai-vmm artifact.

    Raises:
        VmmError: a subclass saying what was wrong (model, options, targets, verification).
    """
    options = options or CompileOptions()
    say = progress or (lambda message: None)
    validate_options(options)
    # Before any compile work: never destroy what the user has at the output path.
    out_path = check_output_path(_output_path(source, output), force=force)
    started = time.perf_counter()

    if options.hardware:
        say(f"planning for hardware profile {options.hardware}")
        profile: HardwareProfile | None = load_profile(options.hardware)
        inventory = profile.inventory  # type: ignore[union-attr]
    else:
        say("discovering devices")
        profile = None
        inventory = hardware.discover(registry.discoverers())
    candidates = resolve_targets(options.target, inventory)
    candidates = [d for d in candidates if d.target in registry.TARGETS]
    present = set() if profile is not None else {d.key for d in inventory.devices}
    machine = Machine(inventory, profile, present)

    label = source if isinstance(source, str | Path) else type(source).__name__
    cache = _open_cache(cache_dir)
    if cache is None:
        say(f"loading {label}")
        loaded = load_model(source, frontend_options)
        return _compile_uncached(loaded, out_path, options, machine, candidates, say, started)
    # The cache key needs only the source's hash: a hit never parses the model.
    digest = source_digest(source)
    loaded_first: LoadedModel | None = None
    if digest is None:
        say(f"loading {label}")
        loaded_first = load_model(source, frontend_options)
        digest = loaded_first.sha256
    key = cache_key(
        {
            "source": digest,
            "options": options.to_json(),
            "toolchain": toolchain(),
            "devices": [c.key for c in candidates],
            "format": 1,
        }
    )
    with cache.locked(key):
        hit = cache.lookup(key)
        if hit is not None:
            _copy_artifact(hit, out_path)
            say(f"cache hit {key[:12]} in {time.perf_counter() - started:.2f} s")
            return CompileResult(
                out_path,
                _read_json(out_path, MANIFEST),
                read_report(out_path if out_path.is_dir() else hit),
                cache_hit=True,
            )
        if loaded_first is None:
            say(f"loading {label}")
        loaded = loaded_first or load_model(source, frontend_options)
        result = _compile_uncached(loaded, out_path, options, machine, candidates, say, started)
        if out_path.is_dir():
            cache.store(key, out_path)
        return result


def _compile_uncached(
    loaded: LoadedModel,
    out_path: Path,
    options: CompileOptions,
    machine: Machine,
    devices: list[Device],
    say: Progress,
    started: float,
) -> CompileResult:
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    model = loaded.model
    normalize_dims(model)
    bounds = apply_input_shapes(model, parse_input_specs(options.input_shapes))
    # Locked while it lives, so a later compile sweeps it if this one is killed.
    with build_directory() as work:
        # The reference is the model as given (shapes applied), saved before any pass runs.
        reference = work / "reference.onnx"
        save_onnx(model, reference)
        timings["load"] = time.perf_counter() - clock
        result = pipeline.run(
            loaded, reference, bounds, work, options, machine, devices, say, timings
        )
        targets = sorted({p.target for p in result.manifest.partitions})
        result.manifest = replace(result.manifest, toolchain=toolchain(*targets))
        result.report["host"] = {
            "cpu": machine.inventory.cpu.model,
            "isa": list(machine.inventory.cpu.isa),
            "libraries": machine.inventory.libraries,
            **({"profile": machine.profile.name} if machine.profile else {}),
        }
        if options.tune:
            # Tuned compiles carry their measurements; --no-tune artifacts must reproduce byte
            # for byte, so they carry no clock readings at all.
            timings["total"] = time.perf_counter() - started
            result.report["timings_s"] = {k: round(v, 4) for k, v in timings.items()}
            result.report["compiled_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        else:
            result.report.pop("tuning", None)
        pipeline.write_checked(result, out_path, work, options, say)
        return CompileResult(out_path, result.manifest.to_json(), result.report)


ANONYMOUS_DIMS = frozenset({"?", "-1", "None", "none", "unk", "dynamic"})
"""Dimension names exporters write for "some size" (paddle2onnx writes ``?``): not a symbol
two axes share."""


def normalize_dims(model: ir.Model) -> None:
    """Dimensions written as -1 (or any negative number) mean "dynamic", and a dimension named
    ``?`` (or another placeholder in ``ANONYMOUS_DIMS``) is anonymous: make them so."""
    for value in [*model.graph.inputs, *model.graph.outputs]:
        shape = value.shape
        if shape is None:
            continue
        dims = [_normal_dim(d) for d in shape]
        if dims != list(shape):
            value.shape = ir.Shape(dims)


def _normal_dim(dim: int | ir.SymbolicDim) -> int | ir.SymbolicDim:
    if isinstance(dim, int):
        return ir.SymbolicDim(None) if dim < 0 else dim
    if dim.value is not None and (not dim.value.strip() or dim.value in ANONYMOUS_DIMS):
        return ir.SymbolicDim(None)
    return dim


def _output_path(source: Any, output: str | Path | None) -> Path:
    if output is not None:
        return Path(output)
    stem = Path(source).stem if isinstance(source, str | Path) else "model"
    return Path(f"{stem}.vmm")


def _open_cache(cache_dir: str | Path | None) -> CompileCache | None:
    root = cache_root(cache_dir)
    if root is None:
        return None
    try:
        return CompileCache(root)
    except OSError as exc:
        raise CompileError(f"cannot use cache directory {root}: {exc}") from exc


def resolve_targets(spec: str, inventory: Inventory) -> list[Device]:
    """``auto`` -> every device of every target; ``a:B,c:D`` -> those, in that priority order."""
    if spec.strip() in ("", "auto"):
        devices = [d for d in inventory.devices if d.target in registry.TARGETS]
        if not devices:
            raise DeviceError("no target is available here: " + "; ".join(inventory.notes))
        return devices
    chosen: list[Device] = []
    for item in (part.strip() for part in spec.split(",")):
        target, _, name = item.partition(":")
        registry.get_target(target)  # an unknown target name is a clear error
        device = inventory.find(target, name or None)
        if device is None:
            available = ", ".join(d.key for d in inventory.devices) or "none"
            raise DeviceError(f"--target {item}: no such device here (available: {available})")
        chosen.append(device)
    return chosen


def _copy_artifact(source: Path, out_path: Path) -> None:
    copy_artifact(source, out_path)


def _read_json(path: Path, name: str) -> dict[str, Any]:
    import json
    import zipfile

    if path.is_dir():
        data: dict[str, Any] = json.loads((path / name).read_text())
        return data
    with zipfile.ZipFile(path) as archive:
        loaded: dict[str, Any] = json.loads(archive.read(name))
        return loaded


_TOOLCHAIN_PACKAGES = ("onnx", "onnx-ir", "onnxscript")


def toolchain(*targets: str) -> dict[str, str]:
    """Versions of ai-vmm and the libraries that shaped a payload (all targets if none given)."""
    names = ["ai-vmm", *_TOOLCHAIN_PACKAGES]
    names += [registry.PACKAGES[t] for t in (targets or tuple(registry.PACKAGES))]
    names = list(dict.fromkeys(names))
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    versions["python"] = platform.python_version().rsplit(".", 1)[0]
    return versions

"""Static-batch packages beside the dynamic one: the cuda target's batch buckets.

``torch.compile(mode="reduce-overhead")`` compiles one graph per batch size, with every size
known. Our package takes a dynamic batch. Inductor then generates its kernels for a symbolic
size: size hints from the export's example, index arithmetic in terms of the symbol, and
layout choices it refuses for a dynamic batch. At batch 32 on the H200 that left ResNet-50 and
BERT 2-3 % behind reduce-overhead (docs/gpu.md, 2026-12-04).

So for the batch sizes the user's samples show (``sample_sizes`` of the first input's axis 0;
at least ``STATIC_MIN_BATCH``, the ``MAX_STATIC`` largest), the build exports the model again
with that batch fixed (its other dynamic axes stay dynamic) and packages it with the same
Inductor settings. The static package is checked against the model. It is kept only where it
runs faster than the dynamic package at its batch, both under the executor with CUDA graphs,
measured in interleaved rounds. The executor runs a call whose batch has a kept static
package on it (``config["static_batches"]``); every other batch runs on the dynamic package.

``TargetOptions.extra["cuda_static_batches"]``: a list of batch sizes to build instead of the
samples' (``[]``: none). A static package that fails to build or check is dropped, with the
reason in ``config["static_note"]``; the dynamic package is never affected.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx_ir as ir

from ai_vmm.targets.base import TargetOptions, axis_symbol
from ai_vmm.targets.cuda_export import export, input_specs, one_line, quiet

STATIC_MIN_BATCH = 8
"""Smallest batch that gets a static package from the samples (below it, a call is dominated
by launches, which CUDA graphs already remove)."""
MAX_STATIC = 2
"""Static packages at most per payload (each costs a compile and its weights' memory)."""
KEEP_BELOW = 0.99
"""A static package is kept where its time is at most this share of the dynamic package's."""
ROUNDS = 5
"""Interleaved timing rounds of the keep decision."""


def batch_symbol(graph_inputs: list[ir.Value]) -> str | None:
    """The symbol of the first input's axis 0, when that axis is dynamic."""
    if not graph_inputs:
        return None
    shape = graph_inputs[0].shape
    if shape is None or len(shape) == 0 or isinstance(shape[0], int):
        return None
    return axis_symbol(graph_inputs[0], 0, shape[0])


def wanted_batches(
    options: TargetOptions, symbol: str | None, dims: dict[str, tuple[int, int]]
) -> list[int]:
    """The batch sizes to build static packages for (module doc), within the export's range."""
    if symbol is None or symbol not in dims:
        return []
    asked = options.extra.get("cuda_static_batches")
    if asked is not None:
        sizes = [int(b) for b in asked]
    else:
        seen = (options.extra.get("sample_sizes") or {}).get(symbol, ())
        sizes = sorted(int(b) for b in seen if int(b) >= STATIC_MIN_BATCH)[-MAX_STATIC:]
    low, high = dims[symbol]
    return sorted({b for b in sizes if low <= b <= high})


def keep(static_ms: float, dynamic_ms: float) -> bool:
    """Whether a static package measured ``static_ms`` earns its place beside the dynamic one."""
    return static_ms <= KEEP_BELOW * dynamic_ms


def build_static(
    module: Any,
    graph_inputs: list[ir.Value],
    example: list[Any],
    dims: dict[str, tuple[int, int]],
    batches: list[int],
    dynamic_entry: Path,
    precision: str,
    config: dict[str, Any],
    output_names: list[str],
    package: Callable[[Any, Path], dict[str, Any]],
    torch_device: str,
) -> None:
    """Build, check and time a static package per batch in ``batches``; record the kept ones
    in ``config["static_batches"]`` and what happened to each in ``config["static_note"]``.

    ``package(program, path)`` compiles an exported program the way the dynamic package was
    compiled and returns the Inductor settings it used.
    """
    import torch

    from ai_vmm.runtime.executors.cuda_load import load_package
    from ai_vmm.targets.cuda_checks import graphs_work, self_check

    symbol = batch_symbol(graph_inputs)
    assert symbol is not None
    kept: dict[str, Any] = {}
    notes: list[str] = []
    names = list(module.arg_names)
    for batch in batches:
        started = time.perf_counter()
        entry = dynamic_entry.with_name(f"{dynamic_entry.stem}-b{batch}.pt2")
        try:
            fixed = {**dims, symbol: (batch, batch)}
            example_b = [
                _resized(t, value, symbol, batch)
                for t, value in zip(example, graph_inputs, strict=True)
            ]
            program, _ = export(module, example_b, names, fixed, graph_inputs)
            specs = input_specs(program, graph_inputs, fixed)
            for spec, base in zip(specs, config["inputs"], strict=True):
                spec["dtype"] = base["dtype"]
            settings = package(program, entry)
            runner = load_package(torch, entry, torch.device(torch_device))
            self_check(runner, module, example_b, precision)
            graphs = torch_device.startswith("cuda") and graphs_work(
                runner, example_b, torch_device
            )
            del runner
            spec_b = {
                "entry": entry.name,
                "inputs": specs,
                "cuda_graphs": bool(graphs),
                "inductor": settings,
                "build_s": round(time.perf_counter() - started, 1),
            }
            static_ms, dynamic_ms = _time_both(
                dynamic_entry, config, spec_b, example_b, output_names, torch_device
            )
        except Exception as exc:  # the dynamic package serves this batch instead
            entry.unlink(missing_ok=True)
            notes.append(f"batch {batch}: not built ({one_line(exc)[:300]})")
            continue
        spec_b["ms"], spec_b["dynamic_ms"] = round(static_ms, 4), round(dynamic_ms, 4)
        if keep(static_ms, dynamic_ms):
            kept[str(batch)] = spec_b
            notes.append(
                f"batch {batch}: static {static_ms:.3f} ms, dynamic {dynamic_ms:.3f} ms: kept"
            )
        else:
            entry.unlink(missing_ok=True)
            notes.append(
                f"batch {batch}: static {static_ms:.3f} ms, dynamic {dynamic_ms:.3f} ms: dropped "
                f"(needs <= {KEEP_BELOW:.2f}x)"
            )
    if kept:
        config["static_batches"] = kept
    if notes:
        config["static_note"] = "; ".join(notes)


def _resized(tensor: Any, value: ir.Value, symbol: str, batch: int) -> Any:
    """``tensor`` with ``batch`` rows where its axis 0 is the batch symbol (rows repeated)."""
    shape = value.shape
    if shape is None or len(shape) == 0 or isinstance(shape[0], int):
        return tensor
    if axis_symbol(value, 0, shape[0]) != symbol:
        return tensor
    reps = -(-batch // int(tensor.shape[0]))
    return tensor.repeat(reps, *([1] * (tensor.dim() - 1)))[:batch].contiguous()


def _time_both(
    dynamic_entry: Path,
    config: dict[str, Any],
    spec: dict[str, Any],
    example: list[Any],
    output_names: list[str],
    torch_device: str,
) -> tuple[float, float]:
    """Median ms per call of the static and the dynamic package at the static one's batch,
    each under the executor (CUDA graphs where they work), interleaved rounds."""
    import torch

    from ai_vmm.runtime.executors.cuda import CudaExecutor

    device = torch_device.split(":")[1] if ":" in torch_device else torch_device
    base = {
        k: v for k, v in config.items() if k not in ("static_batches", "static_note", "pad_batch")
    }
    base["device_outputs"] = list(output_names)
    static_config = {**base, "inputs": spec["inputs"], "cuda_graphs": spec["cuda_graphs"]}
    contenders = {
        "static": CudaExecutor(
            dynamic_entry.with_name(spec["entry"]), device, static_config, tuple(output_names)
        ),
        "dynamic": CudaExecutor(dynamic_entry, device, base, tuple(output_names)),
    }
    feeds = {str(s["name"]): t for s, t in zip(spec["inputs"], example, strict=True)}
    cuda = torch_device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(torch.device(torch_device))

    with quiet():
        for executor in contenders.values():
            for _ in range(3):
                executor.run(feeds)
        sync()
        started = time.perf_counter()
        contenders["dynamic"].run(feeds)
        sync()
        calls = max(3, min(50, int(0.02 / max(time.perf_counter() - started, 1e-5))))
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(ROUNDS):
            for name, executor in contenders.items():
                sync()
                started = time.perf_counter()
                for _ in range(calls):
                    executor.run(feeds)
                sync()
                times[name].append((time.perf_counter() - started) * 1000 / calls)
    return statistics.median(times["static"]), statistics.median(times["dynamic"])


__all__ = [
    "KEEP_BELOW",
    "MAX_STATIC",
    "STATIC_MIN_BATCH",
    "batch_symbol",
    "build_static",
    "keep",
    "wanted_batches",
]

"""Static-batch packages beside the dynamic one: the cuda target's batch buckets.

``torch.compile(mode="reduce-overhead")`` compiles one graph per batch size, with every size
known. Our package takes a dynamic batch. Inductor then generates its kernels for a symbolic
size: size hints from the export's example, index arithmetic in terms of the symbol, and
layout choices it refuses for a dynamic batch. At batch 32 on the H200 that left ResNet-50 and
BERT 2-3 % behind reduce-overhead (docs/gpu.md, 2026-12-04).

So for the batch sizes the user's samples show (``sample_sizes`` of the first input's axis 0;
at least ``STATIC_MIN_BATCH``, the ``MAX_STATIC`` largest, and any below the export's least
batch, which would otherwise run padded: ``pad_batch``), the build exports the model again
with that batch fixed (its other dynamic axes stay dynamic), packages it with the same
Inductor settings and checks it against the model (``config["static_batches"]``). Whether a
call runs on it is not decided here: the target's tuning space offers the variant
``static_dispatch`` (``CudaTarget.tuning_space``), and the compile's own timing on the user's
samples, bucket by bucket, with its rule for a runtime variant (faster in every round beyond
the noise, ``compiler/choice.py``), turns it on where it wins. With it on, the executor runs
a call whose shapes fit a static package on that package; every other call runs on the
dynamic package.

``TargetOptions.extra["cuda_static_batches"]``: a list of batch sizes to build instead of the
samples' (``[]``: none). A static package that fails to build or check is dropped, with the
reason in ``config["static_note"]``; the dynamic package is never affected.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx_ir as ir

from ai_vmm.targets.base import TargetOptions, axis_symbol
from ai_vmm.targets.cuda_export import export, input_specs, one_line

STATIC_MIN_BATCH = 8
"""Smallest batch that gets a static package from the samples (below it, a call is dominated
by launches, which CUDA graphs already remove)."""
MAX_STATIC = 2
"""Static packages at most per payload for the large batches (each costs a compile and its
weights' memory); sample batches the padding would cover come on top."""


def batch_symbol(graph_inputs: list[ir.Value]) -> str | None:
    """The symbol of the first input's axis 0, when that axis is dynamic."""
    if not graph_inputs:
        return None
    shape = graph_inputs[0].shape
    if shape is None or len(shape) == 0 or isinstance(shape[0], int):
        return None
    return axis_symbol(graph_inputs[0], 0, shape[0])


def wanted_batches(
    options: TargetOptions,
    symbol: str | None,
    dims: dict[str, tuple[int, int]],
    padded: dict[str, Any] | None = None,
) -> list[int]:
    """The batch sizes to build static packages for (module doc), within the range asked.

    ``padded``: the payload's ``pad_batch`` (the export's batch starts above the range asked,
    and smaller batches run padded up to its least one). Every sample batch the padding would
    cover gets a static package too, whatever its size: padded, a batch of 1 computes 2 rows
    (PP-OCRv4's detector at 736x1472 on an H100: 16.7 ms padded against 6.4 ms for the eager
    module at batch 1). These come on top of the ``MAX_STATIC`` large ones.
    """
    if symbol is None or symbol not in dims:
        return []
    asked = options.extra.get("cuda_static_batches")
    if asked is not None:
        sizes = [int(b) for b in asked]
    else:
        seen = [int(b) for b in (options.extra.get("sample_sizes") or {}).get(symbol, ())]
        sizes = sorted(b for b in seen if b >= STATIC_MIN_BATCH)[-MAX_STATIC:]
        # The static export resizes axis 0 only: a batch on another axis (Silero's streaming
        # state) stays padded.
        if padded and all(int(a) == 0 for a in (padded.get("inputs") or {}).values()):
            sizes += [b for b in seen if int(padded["from"]) <= b < int(padded["to"])]
    low, high = dims[symbol]
    return sorted({b for b in sizes if low <= b <= high})


def build_static(
    module: Any,
    graph_inputs: list[ir.Value],
    example: list[Any],
    dims: dict[str, tuple[int, int]],
    batches: list[int],
    dynamic_entry: Path,
    precision: str,
    config: dict[str, Any],
    package: Callable[[Any, Path], dict[str, Any]],
    torch_device: str,
) -> None:
    """Build and check a static package per batch in ``batches`` beside ``dynamic_entry``;
    record them in ``config["static_batches"]`` and what happened to each in
    ``config["static_note"]``.

    ``package(program, path)`` compiles an exported program the way the dynamic package was
    compiled and returns the Inductor settings it used.
    """
    import torch

    from ai_vmm.runtime.executors.cuda_load import load_package
    from ai_vmm.targets.cuda_checks import graphs_work, self_check

    symbol = batch_symbol(graph_inputs)
    assert symbol is not None
    built: dict[str, Any] = {}
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
        except Exception as exc:  # the dynamic package serves this batch instead
            entry.unlink(missing_ok=True)
            notes.append(f"batch {batch}: not built ({one_line(exc)[:300]})")
            continue
        built[str(batch)] = {
            "entry": entry.name,
            "inputs": specs,
            "cuda_graphs": bool(graphs),
            "inductor": settings,
            "build_s": round(time.perf_counter() - started, 1),
        }
        notes.append(f"batch {batch}: built in {built[str(batch)]['build_s']} s")
    if built:
        config["static_batches"] = built
    if notes:
        config["static_note"] = "; ".join(notes)


def _resized(tensor: Any, value: ir.Value, symbol: str, batch: int) -> Any:
    """``tensor`` with ``batch`` rows where its axis 0 is the batch symbol."""
    import torch

    from ai_vmm.targets.cuda_checks import rows_up_to

    shape = value.shape
    if shape is None or len(shape) == 0 or isinstance(shape[0], int):
        return tensor
    if axis_symbol(value, 0, shape[0]) != symbol:
        return tensor
    return rows_up_to(tensor, batch, torch).contiguous()


__all__ = ["MAX_STATIC", "STATIC_MIN_BATCH", "batch_symbol", "build_static", "wanted_batches"]

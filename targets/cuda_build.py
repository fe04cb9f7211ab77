"""Building a cuda payload: a torch program -> ``torch.export`` -> an AOTInductor package.

Two sources for the torch program (docs/gpu.md):

- the torch frontend's own ``ExportedProgram`` when the model came from PyTorch and the whole
  model goes to the GPU (``TargetOptions.extra["torch_program"]``): no ONNX round trip;
- the ONNX (sub)graph, converted by our op mapping (``ai_vmm.targets.cuda_convert``).

The torch route is tried first when it is offered and falls back to the ONNX route, saying why
(``config["source_note"]``), when its export fails, when the export narrows a dynamic axis the
ONNX graph keeps, or when the package does not reproduce the program it was built from. A torch
route that failed once is not retried at another precision (``extra["cuda_source"]`` forces a
route: ``"torch"``, ``"onnx"``; default ``"auto"``).

Inductor settings for GPU packages through ``TargetOptions.extra`` (each lands in
``config["inductor"]``): ``cuda_channels_last`` (``"auto"`` by default: channels-last where
Inductor would choose it for a static batch, ``cuda_layout.py``; ``True`` forces it for any
2-D convolution, ``False`` turns it off), opt-in ``cuda_freezing`` (weights become constants:
convolution/batch-norm folding; no gain measured over channels-last alone) and
``cuda_wrapper_opt`` (``"O0"``: the wrapper's host code only runs for warm-up and capture once
CUDA graphs replay).
A build that fails with them is retried with Inductor's defaults (``config["inductor_note"]``).

Reuse: a package built in this process is kept (up to ``CACHE_SIZE``) under a key of the model's
bytes, precision, device, input bounds and source; the same request again (the quantize stage's
retries, a re-planned partition, ``auto`` comparing plans) copies it instead of compiling again.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import logging
import shutil
import tempfile
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx_ir as ir

from ai_vmm.runtime.devices import Device
from ai_vmm.runtime.errors import CompileError
from ai_vmm.targets.base import Payload, TargetOptions, axis_symbol
from ai_vmm.targets.cuda_layout import channels_last_pays, conv2d_nodes

PRECISIONS = ("fp32", "fp16", "bf16")
DEFAULT_MAX_DIM = 4096
"""Upper bound of a dynamic axis without an ``--input`` range (torch.export needs none, but a
bound keeps Inductor's guards and kernel choices sane)."""
CACHE_SIZE = 8
"""Packages kept per process for reuse (each is about the size of the model's weights)."""
SELF_CHECK = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 4e-2}
"""Largest relative error norm ``|pkg - eager| / |eager|`` a torch-route package may show."""

_log = logging.getLogger(__name__)


class RouteError(Exception):
    """The torch route cannot give this model's package (the message says why)."""


def torch_device_of(device: Device) -> str:
    """The torch device of ``device`` (``cuda:0``; a test may ask for ``cpu`` explicitly)."""
    return str(device.properties.get("torch_device") or f"cuda:{device.name}")


def build_package(
    model: ir.Model,
    device: Device,
    options: TargetOptions,
    out_dir: Path,
    precision: str,
    *,
    eager: bool = False,
) -> Payload:
    """Export the model (or the frontend's torch program) and compile an AOTInductor package.

    With ``eager`` the exported program is saved as it is (``program.pt2``, run eagerly by the
    executor): no Inductor compile, for a float baseline that is only compared against.
    """
    import torch

    if precision not in PRECISIONS:
        raise CompileError(
            f"cuda target: unknown precision '{precision}' ({', '.join(PRECISIONS)})"
        )
    compute = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    if precision == "fp32" and torch.cuda.is_available():
        from ai_vmm.runtime.executors.cuda import strict_fp32

        strict_fp32(torch)  # Inductor picks kernels under the same flags the executor runs
    torch_device = torch_device_of(device)
    if torch_device.startswith("cuda") and not torch.cuda.is_available():
        raise CompileError(
            "cuda target: no CUDA device here, and an AOTInductor package can only be built "
            "on a machine with the GPU (plan for it with --hardware, build on the device)"
        )
    wanted = str(options.extra.get("cuda_source", "auto"))
    key = _cache_key(model, options, precision, torch_device, eager)
    cached = _CACHE.get(key, out_dir)
    if cached is not None:
        return cached
    started = time.perf_counter()
    payload: Payload | None = None
    note = ""
    program = options.extra.get("torch_program")
    if wanted != "onnx" and _torch_route_offered(model, options):
        note = _FAILED.get(program, "")
        if not note:
            try:
                module = _program_module(
                    program, [v.name for v in model.graph.inputs], compute, torch_device
                )
                payload = _build(
                    module, "torch", model, options, out_dir, precision, eager, torch_device
                )
            except Exception as exc:  # export, Inductor or the self-check: any of them
                note = (
                    f"the frontend's torch program did not give a package "
                    f"({_one_line(exc)[:400]}): the ONNX graph was compiled instead"
                )
                _FAILED[program] = note
                _clear(out_dir)
        if payload is None and wanted == "torch":
            reason = note.removesuffix(": the ONNX graph was compiled instead")
            raise CompileError(
                f"cuda target: {reason} (cuda_source='torch' forbids the ONNX route)"
            )
    if payload is None:
        from ai_vmm.targets.cuda_convert import ConversionError, to_torch

        try:
            module = to_torch(model, compute).eval()
        except ConversionError as exc:
            raise CompileError(f"cuda target: {exc}") from exc
        payload = _build(module, "onnx", model, options, out_dir, precision, eager, torch_device)
    if note:
        payload.config["source_note"] = note
    payload.config["build_s"] = round(time.perf_counter() - started, 1)
    _CACHE.put(key, out_dir, payload)
    return payload


def _build(
    module: Any,
    source: str,
    model: ir.Model,
    options: TargetOptions,
    out_dir: Path,
    precision: str,
    eager: bool,
    torch_device: str,
) -> Payload:
    import torch

    from ai_vmm.targets.cuda_convert import torch_dtype

    stages: dict[str, float] = {}
    mark = time.perf_counter()

    def stage(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        stages[name] = round(stages.get(name, 0.0) + now - mark, 1)
        mark = now

    graph_inputs = list(model.graph.inputs)
    module = module.to(torch_device)
    bounds = options.extra.get("input_bounds") or {}
    sample_dims = options.extra.get("sample_dims") or {}
    example, dims = example_inputs(graph_inputs, bounds, sample_dims, torch_device)
    program, shape_note = export(module, example, list(module.arg_names), dims, graph_inputs)
    stage("export")
    specs = input_specs(program, graph_inputs, dims)
    exported = program.module()  # unlifted once: both checks below run it eagerly
    known = options.extra.get("sample_sizes") or {}
    candidates = {
        (index, axis): [int(n) for n in known.get(axis_symbol(value, axis, dim), ())]
        for index, value in enumerate(graph_inputs)
        for axis, dim in enumerate(value.shape or [])
        if not isinstance(dim, int)
    }
    raised = _smallest_sizes_check(exported, module, example, specs, precision, candidates)
    if raised:
        note = f"the export differs from the model at {raised}: those sizes are refused"
        shape_note = f"{shape_note}; {note}" if shape_note else note
    padding = _batch_padding(
        program, exported, module, example, specs, dims, graph_inputs, precision
    )
    stage("size checks")
    if source == "torch":
        narrowed = [
            f"{s['name']} axis {axis}"
            for s, want in zip(specs, _wanted(graph_inputs, dims), strict=True)
            for axis, (low, high) in want.items()
            if s["ranges"].get(str(axis)) != [low, high]
        ]
        if narrowed:
            raise RouteError(f"its export narrows dynamic axes ({', '.join(narrowed[:4])})")
    for spec, value in zip(specs, graph_inputs, strict=True):
        spec["dtype"] = str(torch_dtype(value.dtype)).replace("torch.", "")
    config: dict[str, Any] = {
        "inputs": specs,
        "precision": precision,
        "source": source,
        "torch": str(torch.__version__),
        "device_type": torch_device.split(":")[0],
    }
    if shape_note:
        config["shape_note"] = shape_note
    if isinstance(padding, dict):
        config["pad_batch"] = padding
    elif padding:
        config["shape_note"] = f"{padding}; {shape_note}" if shape_note else padding
    if eager:
        entry = out_dir / "program.pt2"
        with _quiet():
            torch.export.save(program, str(entry))
        config["runner"] = "eager"
    else:
        entry = out_dir / "model.pt2"
        settings = inductor_settings(torch, program, torch_device, options)
        try:
            with _quiet():
                torch._inductor.aoti_compile_and_package(
                    program, package_path=str(entry), inductor_configs=settings
                )
        except Exception as exc:
            if not settings:
                raise
            config["inductor_note"] = f"built with Inductor's defaults: {_one_line(exc)[:300]}"
            _clear(out_dir)
            settings = {}
            with _quiet():
                torch._inductor.aoti_compile_and_package(program, package_path=str(entry))
        config["inductor"] = settings
    stage("package" if not eager else "save")
    if torch_device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(torch_device))
        config["compute_capability"] = f"{props.major}.{props.minor}"
        config["gpu"] = str(props.name)
    if not eager:
        from ai_vmm.runtime.executors.cuda_load import load_package

        if getattr(module, "runs_loops", False):
            from ai_vmm.targets.cuda_child_run import run_in_child

            run_in_child(entry, example, torch_device)
            stage("child run")
        runner = load_package(torch, entry, torch.device(torch_device))
        stage("load")
        if source == "torch":
            _self_check(runner, module, example, precision)
            stage("self-check")
        if torch_device.startswith("cuda"):
            config["cuda_graphs"] = graphs_work(runner, example, torch_device)
            stage("graph check")
    config["build_stages_s"] = stages
    files = tuple(sorted(p.name for p in out_dir.iterdir()))
    return Payload(entry=entry.name, files=files, config=config)


def _torch_route_offered(model: ir.Model, options: TargetOptions) -> bool:
    """The frontend's program computes exactly this graph (the whole model, same names)."""
    if options.extra.get("torch_program") is None:
        return False
    names = options.extra.get("torch_program_io")
    if not names:
        return False
    inputs = [v.name for v in model.graph.inputs]
    outputs = [v.name for v in model.graph.outputs]
    return list(names[0]) == inputs and list(names[1]) == outputs


def _program_module(
    program: Any, input_names: list[str | None], compute: Any, device: str = "cpu"
) -> Any:
    """An ``nn.Module`` around an ExportedProgram: float32 in and out, ``compute`` inside.

    A program exported on the CPU has the CPU burnt into nodes that make tensors
    (``arange(..., device=cpu)`` in BERT's and ViT's position ids): moving the module's
    parameters is not enough, so the program goes through ``move_to_device_pass`` first
    (measured on the H200: both re-exports failed with a device mismatch without it).
    """
    import torch

    from ai_vmm.targets.cuda_convert import named_forward, python_names

    # A copy: the program's module shares its parameters with the user's model, which moving
    # them to the GPU (or to fp16) would change under the user's feet.
    program = copy.deepcopy(program)
    if device != "cpu":
        try:
            from torch.export.passes import move_to_device_pass
        except ImportError:  # an older torch: parameters are moved by the caller
            pass
        else:
            program = move_to_device_pass(program, device)
    inner = program.module()
    if compute != torch.float32:
        inner = inner.to(compute)

    class ProgramModule(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def run_graph(self, args: list[Any]) -> tuple[Any, ...]:
            cast = [
                a.to(compute) if a.is_floating_point() and a.dtype != compute else a for a in args
            ]
            flat = torch.utils._pytree.tree_leaves(self.inner(*cast))
            return tuple(
                o.to(torch.float32) if o.is_floating_point() and o.dtype != torch.float32 else o
                for o in flat
            )

    names = python_names([name or "" for name in input_names])
    module = named_forward(ProgramModule, names)()
    module.arg_names = names
    return module


def inductor_settings(
    torch: Any, program: Any, torch_device: str, options: TargetOptions
) -> dict[str, Any]:
    """Inductor configs for a GPU package (module doc); for a CPU (test) package only the
    loop workaround."""
    settings: dict[str, Any] = {}
    config = torch._inductor.config
    if _has_loops(program) and hasattr(config, "inplace_buffers"):
        # PyTorch 2.11-2.13: a scan (our LSTM/GRU/RNN) whose stacked outputs feed a fused
        # kernel gets that kernel's output computed in place into the loop's output buffer,
        # and the C++ wrapper declares the buffer twice ("conflicting declaration 'buf6'"): the
        # package does not compile. Without in-place buffers it does.
        settings["inplace_buffers"] = False
    if not torch_device.startswith("cuda"):
        return settings
    if options.extra.get("cuda_freezing", False) and hasattr(config, "freezing"):
        settings["freezing"] = True
    layout = options.extra.get("cuda_channels_last", "auto")
    if hasattr(config, "force_layout_optimization") and layout is not False:
        convs = conv2d_nodes(program)
        if convs and (layout is True or channels_last_pays(program, convs)):
            settings["force_layout_optimization"] = True
    level = options.extra.get("cuda_wrapper_opt")
    if level and hasattr(config.aot_inductor, "compile_wrapper_opt_level"):
        settings["aot_inductor.compile_wrapper_opt_level"] = str(level)
    return settings


def _has_loops(program: Any) -> bool:
    """Whether the exported program runs a ``scan``/``while_loop`` (higher-order ops)."""
    graph = getattr(getattr(program, "graph_module", None), "graph", None)
    if graph is None:
        return False
    names = ("scan", "while_loop")
    return any(
        node.op == "call_function" and getattr(node.target, "__name__", "") in names
        for node in graph.nodes
    )


def example_inputs(
    inputs: list[ir.Value],
    bounds: dict[str, list[Any]],
    sample_dims: dict[str, int],
    torch_device: str,
) -> tuple[list[Any], dict[str, tuple[int, int]]]:
    """Example tensors for ``torch.export`` and the (min, max) of every symbolic dimension.

    A dynamic axis gets size >= 2 in the example (torch.export specialises sizes 0 and 1).
    """
    import torch

    from ai_vmm.targets.cuda_convert import torch_dtype

    dims: dict[str, tuple[int, int]] = {}
    tensors = []
    generator = torch.Generator().manual_seed(0)
    for value in inputs:
        shape: list[int] = []
        limits = bounds.get(value.name or "") or []
        for axis, dim in enumerate(value.shape or []):
            if isinstance(dim, int):
                shape.append(dim)
                continue
            symbol = axis_symbol(value, axis, dim)
            low, high = 1, DEFAULT_MAX_DIM
            bound = limits[axis] if axis < len(limits) else None
            if isinstance(bound, list | tuple) and len(bound) == 2:
                low, high = int(bound[0] or 1), int(bound[1] or DEFAULT_MAX_DIM)
            elif isinstance(bound, int):
                low = high = bound
            if symbol in dims:
                low, high = max(low, dims[symbol][0]), min(high, dims[symbol][1])
            dims[symbol] = (low, high)
            size = sample_dims.get(symbol, 2)
            shape.append(min(max(size, low, 2), high))
        dtype = torch_dtype(value.dtype)
        if dtype.is_floating_point:
            data = torch.randn(shape, dtype=torch.float32, generator=generator).to(dtype)
        else:
            data = torch.zeros(shape, dtype=dtype)
        tensors.append(data.to(torch_device))
    return tensors, dims


def _wanted(
    inputs: list[ir.Value], dims: dict[str, tuple[int, int]]
) -> list[dict[int, tuple[int, int]]]:
    """Per input, the (min, max) asked for each dynamic axis."""
    out = []
    for value in inputs:
        axes = {}
        for axis, dim in enumerate(value.shape or []):
            if not isinstance(dim, int):
                low, high = dims[axis_symbol(value, axis, dim)]
                if low != high:
                    axes[axis] = (low, high)
        out.append(axes)
    return out


def export(
    module: Any,
    example: list[Any],
    arg_names: list[str],
    dims: dict[str, tuple[int, int]],
    inputs: list[ir.Value],
) -> tuple[Any, str]:
    """``torch.export`` with named dims, keeping the lower bounds asked for.

    When the named export fails, DYNAMIC hints find the ranges the model really allows (a
    position table caps a sequence axis at 128, say), but hints also raise every lower bound
    of 1 to 2 (export's 0/1 specialization): a package that then refuses batch 1. So the named
    export is retried with the hints' upper bounds and the asked-for lower bounds, then the same
    under ``backed_size_oblivious`` (size 1 not special: torch 2.11 guarded ``batch != 1`` where
    2.13 proves it away), and only then are the hints' ranges kept; AUTO last (the model pins
    an axis: export decides). The compile verifies the package at the sample sizes either way.
    """
    import torch
    from torch.export import Dim

    if getattr(module, "runs_loops", False):
        # A scan body is compiled by dynamo, which caches it by code object across modules: a
        # body traced before at a fixed batch (an eager run of another model) left a guard
        # `3 != B` in this export (tests, 2026-12-05). A fresh compiler state per loop export
        # (other torch.compile'd code in the process recompiles on its next call).
        torch.compiler.reset()

    def named(bounds: dict[str, tuple[int, int]]) -> dict[str, Any]:
        return {s: Dim(_dim_name(s), min=lo, max=hi) for s, (lo, hi) in bounds.items() if lo != hi}

    def hint(symbol: str) -> Any:
        low, high = dims[symbol]
        try:
            return Dim.DYNAMIC(min=low, max=high)
        except TypeError:  # a torch whose hints take no bounds
            return Dim.DYNAMIC

    def shapes(mode: str, bounds: dict[str, tuple[int, int]]) -> Any:
        dynamic = named(bounds)
        spec = []
        for value in inputs:
            axes: dict[int, Any] = {}
            for axis, dim in enumerate(value.shape or []):
                if isinstance(dim, int):
                    continue
                symbol = axis_symbol(value, axis, dim)
                if symbol in dynamic:
                    axes[axis] = {"named": dynamic[symbol], "auto": Dim.AUTO}.get(mode) or hint(
                        symbol
                    )
            spec.append(axes or None)
        return dict(zip(arg_names, spec, strict=True))

    def attempt(mode: str, bounds: dict[str, tuple[int, int]], oblivious: bool = False) -> Any:
        from torch.fx.experimental import _config as fx_config

        patch: Any = (
            fx_config.patch(backed_size_oblivious=True)  # type: ignore[attr-defined]
            if oblivious and hasattr(fx_config, "backed_size_oblivious")
            else contextlib.nullcontext()
        )
        with patch:
            return torch.export.export(
                module, tuple(example), dynamic_shapes=shapes(mode, bounds), strict=False
            )

    errors: list[str] = []
    with _quiet():
        try:
            return attempt("named", dims), ""
        except Exception as exc:
            errors.append(_one_line(exc))
        try:
            hinted = attempt("hints", dims)
        except Exception as exc:
            errors.append(_one_line(exc))
            hinted = None
        if hinted is not None:
            found = _program_ranges(hinted, inputs)
            narrowed = {s: (lo, min(hi, found.get(s, (lo, hi))[1])) for s, (lo, hi) in dims.items()}
            for oblivious in (False, True):
                try:
                    program = attempt("named", narrowed, oblivious)
                except Exception as exc:
                    errors.append(_one_line(exc))
                    continue
                how = "size 1 taken obliviously, " if oblivious else ""
                return program, f"exported with {how}the ranges the model allows: {errors[0][:300]}"
            return hinted, f"exported with hints: {errors[0][:300]}"
        try:
            program = attempt("auto", dims)
        except Exception as exc:
            errors.append(_one_line(exc))
            raise CompileError(f"cuda target: torch.export failed: {errors[-1]}") from None
        return program, f"some axes were pinned by the model: {errors[0][:300]}"


def _bound(value: Any, unbounded: int) -> int:
    """A range end as an int (torch's ``int_oo`` says ``is_finite`` yet has no int value)."""
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError, AttributeError):
        return unbounded


def _program_ranges(program: Any, inputs: list[ir.Value]) -> dict[str, tuple[int, int]]:
    """The range of each ONNX dimension symbol as the exported program bounds it."""
    found: dict[str, tuple[int, int]] = {}
    for value, spec in zip(inputs, input_specs(program, inputs, {}), strict=True):
        for axis_key, (low, high) in spec["ranges"].items():
            dim = (value.shape or [])[int(axis_key)]
            if isinstance(dim, int):
                continue
            symbol = axis_symbol(value, int(axis_key), dim)
            old = found.get(symbol, (low, high))
            found[symbol] = (max(low, old[0]), min(high, old[1]))
    return found


def _dim_name(symbol: str) -> str:
    import re

    name = re.sub(r"\W", "_", symbol)
    return name if name and not name[0].isdigit() else f"d_{name}"


def input_specs(
    program: Any, inputs: list[ir.Value], dims: dict[str, tuple[int, int]]
) -> list[dict[str, Any]]:
    """Each input as the package takes it: fixed sizes (``None`` where dynamic), the range
    of each dynamic axis (the executor enforces it: AOTInductor does not) and its symbol
    (axes sharing one must be equal)."""
    user = set(program.graph_signature.user_inputs)
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in user]
    ranges = program.range_constraints
    specs = []
    for index, value in enumerate(inputs):
        spec: dict[str, Any] = {"name": value.name or "", "shape": [], "ranges": {}}
        symbols: dict[str, str] = {}
        fake = placeholders[index].meta.get("val") if index < len(placeholders) else None
        shape = list(getattr(fake, "shape", ())) or [None] * len(value.shape or [])
        for axis, size in enumerate(shape):
            if isinstance(size, int):
                spec["shape"].append(int(size))
                continue
            spec["shape"].append(None)
            expr = getattr(getattr(size, "node", None), "expr", None)
            bound = ranges.get(expr) if expr is not None else None
            if bound is not None:
                low, high = _bound(bound.lower, 0), _bound(bound.upper, 2**31 - 1)
                spec["ranges"][str(axis)] = [low, high]
                symbols[str(axis)] = str(expr)
        if symbols:
            spec["symbols"] = symbols
        specs.append(spec)
    return specs


def _smallest_sizes_check(
    exported: Any,
    module: Any,
    example: list[Any],
    specs: list[dict[str, Any]],
    precision: str,
    candidates: dict[tuple[int, int], list[int]] | None = None,
) -> str:
    """Run the exported program at the smallest size of each dynamic dimension, against the
    module.

    Export traces at sizes >= 2 and may take size 1 obliviously: a branch on ``batch == 1``
    is then traced the other way with nothing to say so (torch 2.13 exports such a branch with
    the range 1..N). Where the two disagree, that dimension's lower bound goes up to the
    smallest size the user's samples take below the example's (``candidates``, per input
    index and axis) at which the two agree, else to the example's size, then down by halves
    while the module runs and the two agree (the executor refuses the rest); the returned text
    names the axes; '' when they agree everywhere. (A PP-OCR detector's hinted export, refused
    below its first sample's width of 1472, failed its own second sample, 1088 wide: H200,
    2026-12-05. Now its width starts at 544, its height at 736.)
    """

    by_symbol: dict[str, list[tuple[int, dict[str, Any], int, int, int]]] = {}
    for index, (tensor, spec) in enumerate(zip(example, specs, strict=True)):
        for axis_key, (low, _high) in spec["ranges"].items():
            axis = int(axis_key)
            if 1 <= low < tensor.shape[axis]:
                symbol = spec.get("symbols", {}).get(axis_key, f"{index}:{axis}")
                entry = (index, spec, axis, int(low), int(tensor.shape[axis]))
                by_symbol.setdefault(symbol, []).append(entry)
    raised: list[str] = []
    for entries in by_symbol.values():
        smallest = list(example)
        for index, _spec, axis, low, _size in entries:
            smallest[index] = smallest[index].narrow(axis, 0, low)
        if _agree(exported, module, smallest, precision):
            continue
        index, _spec, axis, low, size = entries[0]
        tried = [n for n in (candidates or {}).get((index, axis), []) if low < n < size]
        for least in [*tried, size]:
            if least == size or _agree(
                exported, module, _narrowed(example, entries, least), precision
            ):
                break
        # Below that, halve while the model runs there and the two agree: the sizes that fail
        # are usually few and small (the size-1 branch), and a range that starts at the first
        # sample's size refuses every smaller input a user sends.
        trial = least // 2
        while trial > low and _agree(
            exported, module, _narrowed(example, entries, trial), precision, vacuous=False
        ):
            least, trial = trial, trial // 2
        for _index, spec, axis, _low, _size in entries:
            spec["ranges"][str(axis)][0] = least
            raised.append(f"{spec['name']} axis {axis} below {least}")
    return ", ".join(raised[:4])


def _narrowed(
    example: list[Any], entries: list[tuple[int, dict[str, Any], int, int, int]], size: int
) -> list[Any]:
    """``example`` with every (input, axis) of ``entries`` cut to ``size``."""
    out = list(example)
    for index, _spec, axis, _low, _size in entries:
        out[index] = out[index].narrow(axis, 0, size)
    return out


def _batch_padding(
    program: Any,
    exported: Any,
    module: Any,
    example: list[Any],
    specs: list[dict[str, Any]],
    dims: dict[str, tuple[int, int]],
    inputs: list[ir.Value],
    precision: str,
) -> dict[str, int] | str:
    """Where the package's batch range starts above the one asked for, whether a smaller batch
    can run padded up to the package's least batch (rows repeated, outputs cut back).

    Torch 2.11 exported the zoo Llama with batch 2..N whatever we asked (H200, 2026-12-04),
    and the executor refused batch 1. Padding is right only where rows do not mix: the axis
    must be the leading axis of every input and output, and the program at the padded size
    must give the model's own result at the small one (checked here on the example's rows).
    Returns ``{"from": small, "to": least}``, or why not (recorded in the payload's note).
    """
    import torch

    lows = {spec.get("symbols", {}).get("0"): spec["ranges"].get("0", [0, 0])[0] for spec in specs}
    if len(lows) != 1 or None in lows:
        return "no padding: the inputs' leading axes are not one batch axis"
    ((expr, least),) = lows.items()
    wanted = {
        dims[axis_symbol(v, 0, v.shape[0])][0]
        for v in inputs
        if v.shape and len(v.shape) and not isinstance(v.shape[0], int)
    }
    if len(wanted) != 1:
        return "no padding: no single batch size was asked for"
    small = wanted.pop()
    if not 1 <= small < least:
        return ""
    outputs = next(n for n in program.graph.nodes if n.op == "output").args[0]
    for node in outputs:
        shape = getattr(getattr(node, "meta", {}).get("val"), "shape", ())
        if not shape or not _is_size(getattr(getattr(shape[0], "node", None), "expr", None), expr):
            return f"no padding: an output's leading axis is not the batch ({expr})"
    if any(t.shape[0] < small for t in example):
        return "no padding: the example has fewer rows than the batch asked for"
    # Checked with other rows than the executor's padding (it repeats the last row): a copy of
    # a row hides mixing that averages rows. Where the example (the user's samples: often one
    # image) has too few rows, the extra ones are its rows mirrored along the last axis.
    rows = [t.narrow(0, 0, small) for t in example]
    padded = [_rows_up_to(t, least, torch) for t in example]
    try:
        with torch.inference_mode():
            want = torch.utils._pytree.tree_leaves(module(*rows))
            got = torch.utils._pytree.tree_leaves(exported(*padded))
    except Exception as exc:
        return f"no padding: the check at batch {least} failed: {_one_line(exc)[:200]}"
    cut = [g.narrow(0, 0, small) for g in got]
    differs = _difference(cut, want, precision)
    if differs:
        return f"no padding: rows mix (batch {least} cut to {small} differs: {differs})"
    return {"from": int(small), "to": int(least)}


def _is_size(size: Any, symbol: str) -> bool:
    """Whether the symbolic ``size`` is the size ``symbol`` itself: the same expression, or one
    of that symbol alone that gives it back at every size tried (``floor(1.0 * s)`` from a
    resize by 1.0 is ``s``, though torch.export writes it otherwise)."""
    if size is None:
        return False
    if str(size) == symbol:
        return True
    free: set[Any] = set(getattr(size, "free_symbols", ()) or ())
    if len(free) != 1 or str(next(iter(free))) != symbol:
        return False
    (name,) = free
    try:
        return all(int(size.xreplace({name: value})) == value for value in (1, 2, 3, 17, 640, 4097))
    except (TypeError, ValueError):
        return False


def _rows_up_to(tensor: Any, rows: int, torch: Any) -> Any:
    """``tensor``'s first ``rows`` rows, completed with its own rows mirrored along the last
    axis (other values of the same kind and range) where it has fewer."""
    if tensor.shape[0] >= rows:
        return tensor.narrow(0, 0, rows)
    extra = tensor.flip(-1) if tensor.dim() > 1 else tensor
    while tensor.shape[0] + extra.shape[0] < rows:
        extra = torch.cat([extra, extra])
    return torch.cat([tensor, extra.narrow(0, 0, rows - tensor.shape[0])])


def _agree(
    exported: Any, module: Any, feeds: list[Any], precision: str, *, vacuous: bool = True
) -> bool:
    """The exported program computes what the module computes on these inputs (or, with
    ``vacuous``, the module itself cannot take them: not a valid combination of sizes,
    nothing to say)."""
    import torch

    try:
        with torch.inference_mode():
            want = torch.utils._pytree.tree_leaves(module(*feeds))
    except Exception:
        return vacuous
    try:
        with torch.inference_mode():
            got = torch.utils._pytree.tree_leaves(exported(*feeds))
    except Exception:  # the model runs there and the program does not
        return False
    return not _difference(got, want, precision)


def _difference(got: Any, want: Any, precision: str) -> str:
    """How ``got`` differs from ``want`` (output by output: shape, exact for integers, relative
    error norm within ``SELF_CHECK`` for floats); '' when it does not."""
    import torch

    got, want = list(got), list(want)
    if len(got) != len(want):
        return f"{len(got)} outputs, the program gives {len(want)}"
    for index, (a, b) in enumerate(zip(got, want, strict=True)):
        if a.shape != b.shape:
            return f"output {index}: shape {tuple(a.shape)}, the program gives {tuple(b.shape)}"
        if not a.is_floating_point():
            if not torch.equal(a, b):
                return f"output {index} differs from the program's"
            continue
        ref = b.double()
        err = float((a.double() - ref).norm() / ref.norm().clamp_min(1e-12))
        if not err <= SELF_CHECK[precision]:
            return f"output {index} differs from the program's by {err:.2e} (relative norm)"
    return ""


def _self_check(runner: Any, module: Any, example: list[Any], precision: str) -> None:
    """The package computes what the program it was built from computes (torch route)."""
    import torch

    with torch.inference_mode():
        want = module(*example)
        got = runner(*example)
    difference = _difference(got, want, precision)
    if difference:
        raise RouteError(difference)


def graphs_work(runner: Any, example: list[Any], torch_device: str) -> bool:
    """Whether the package runs under CUDA-graph capture and replays the same outputs."""
    import torch

    from ai_vmm.runtime.executors.cuda import capture

    try:
        with torch.inference_mode():
            expected = [o.clone() for o in runner(*example)]
            graph = capture(runner, example, torch.device(torch_device))
            graph.graph.replay()
            torch.cuda.synchronize(torch.device(torch_device))
            got = [o.clone() for o in graph.outputs]
        return all(
            torch.equal(a, b) or torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-3)
            for a, b in zip(expected, got, strict=True)
        )
    except Exception as exc:
        _log.debug("CUDA graph capture failed: %s", exc)
        return False


# --------------------------------------------------------------------------------------------
# Reuse within the process
# --------------------------------------------------------------------------------------------

_FAILED: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
"""Frontend programs whose torch route failed, and why (not retried at another precision)."""


class _PackageCache:
    """Built payloads by request key, each in a temporary directory of its own."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: OrderedDict[str, tuple[Path, Payload]] = OrderedDict()
        self.lock = threading.Lock()
        self.hits = 0

    def get(self, key: str | None, out_dir: Path) -> Payload | None:
        if key is None:
            return None
        with self.lock:
            entry = self.entries.get(key)
            if entry is None or not entry[0].is_dir():
                return None
            self.entries.move_to_end(key)
            self.hits += 1
        folder, payload = entry
        for name in payload.files:
            shutil.copy2(folder / name, out_dir / name)
        config = json.loads(json.dumps(payload.config))
        config["reused"] = True
        return Payload(entry=payload.entry, files=payload.files, config=config)

    def put(self, key: str | None, out_dir: Path, payload: Payload) -> None:
        if key is None:
            return
        folder = Path(tempfile.mkdtemp(prefix="ai-vmm-cuda-pkg-"))
        for name in payload.files:
            shutil.copy2(out_dir / name, folder / name)
        with self.lock:
            self.entries[key] = (folder, payload)
            while len(self.entries) > self.size:
                _, (old, _) = self.entries.popitem(last=False)
                shutil.rmtree(old, ignore_errors=True)


_CACHE = _PackageCache(CACHE_SIZE)


def _cache_key(
    model: ir.Model, options: TargetOptions, precision: str, torch_device: str, eager: bool
) -> str | None:
    """The request's identity, or ``None`` when it has none we can compute cheaply."""
    try:
        digest = hashlib.sha256(ir.serde.serialize_model(model).SerializeToString())
    except Exception:  # > 2 GB protobuf, or an IR the serializer refuses: no reuse
        return None
    extra = {
        k: v
        for k, v in options.extra.items()
        if k not in ("torch_program", "torch_program_io") and _plain(v)
    }
    program = options.extra.get("torch_program")
    if program is not None and _torch_route_offered(model, options):
        extra["torch_program_id"] = id(program)
    digest.update(
        json.dumps(
            [precision, torch_device, eager, extra, str(_torch_version())],
            sort_keys=True,
            default=str,
        ).encode()
    )
    return digest.hexdigest()


def _plain(value: Any) -> bool:
    try:
        json.dumps(value, default=None)
    except (TypeError, ValueError):
        return False
    return True


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


def _clear(out_dir: Path) -> None:
    for path in out_dir.iterdir():
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep torch's export/compile chatter off the user's terminal."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__

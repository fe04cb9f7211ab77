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
convolution/batch-norm folding; no gain measured over channels-last alone),
``cuda_coordinate_descent`` (Inductor refines each Triton kernel's block sizes and warps
around its chosen configuration at compile time; not yet measured: BERT's batch-32 gap on the
H200 is one LayerNorm reduction kernel, docs/gpu.md) and
``cuda_wrapper_opt`` (``"O0"``: the wrapper's host code only runs for warm-up and capture once
CUDA graphs replay).
A build that fails with them is retried with Inductor's defaults (``config["inductor_note"]``).

The export itself is ``cuda_export``; the checks of the program and package against the module
(smallest sizes, batch padding, the self-check, CUDA-graph capture) are ``cuda_checks``.

Reuse: a package built in this process is kept (up to ``CACHE_SIZE``) under a key of the model's
bytes, precision, device, input bounds and source; the same request again (the quantize stage's
retries, a re-planned partition, ``auto`` comparing plans) copies it instead of compiling again.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any

import onnx_ir as ir

from ai_vmm.runtime.devices import Device
from ai_vmm.runtime.errors import CompileError
from ai_vmm.targets.base import Payload, TargetOptions, axis_symbol
from ai_vmm.targets.cuda_checks import (
    RouteError,
    batch_padding,
    graphs_work,
    self_check,
    smallest_sizes_check,
)
from ai_vmm.targets.cuda_export import (
    example_inputs,
    export,
    input_specs,
    one_line,
    quiet,
    wanted,
)
from ai_vmm.targets.cuda_layout import channels_last_pays, conv2d_nodes
from ai_vmm.targets.cuda_static import batch_symbol, build_static, wanted_batches

PRECISIONS = ("fp32", "fp16", "bf16")
CACHE_SIZE = 8
"""Packages kept per process for reuse (each is about the size of the model's weights)."""


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
                    f"({one_line(exc)[:400]}): the ONNX graph was compiled instead"
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
    known = options.extra.get("sample_sizes") or {}
    example, dims = example_inputs(graph_inputs, bounds, sample_dims, torch_device, known)
    program, shape_note = export(module, example, list(module.arg_names), dims, graph_inputs)
    stage("export")
    specs = input_specs(program, graph_inputs, dims)
    exported = program.module()  # unlifted once: both checks below run it eagerly
    candidates = {
        (index, axis): [int(n) for n in known.get(axis_symbol(value, axis, dim), ())]
        for index, value in enumerate(graph_inputs)
        for axis, dim in enumerate(value.shape or [])
        if not isinstance(dim, int)
    }
    raised = smallest_sizes_check(exported, module, example, specs, precision, candidates)
    if raised:
        note = f"the export differs from the model at {raised}: those sizes are refused"
        shape_note = f"{shape_note}; {note}" if shape_note else note
    padding = batch_padding(
        program,
        exported,
        module,
        example,
        specs,
        dims,
        graph_inputs,
        precision,
        [str(v.name) for v in model.graph.outputs],
    )
    stage("size checks")
    if source == "torch":
        narrowed = [
            f"{s['name']} axis {axis}"
            for s, want in zip(specs, wanted(graph_inputs, dims), strict=True)
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
    fell_back = False
    if eager:
        entry = out_dir / "program.pt2"
        with quiet():
            torch.export.save(program, str(entry))
        config["runner"] = "eager"
    else:
        entry = out_dir / "model.pt2"
        try:
            settings, inductor_note = package_program(torch, program, entry, torch_device, options)
        except Exception as exc:
            # AOTInductor refused a model that exported and checked (torch 2.11 on the GPU:
            # an assertion inside Inductor for two LSTMs): the exported program runs eagerly,
            # in CUDA graphs where they capture, rather than no GPU build at all.
            entry.unlink(missing_ok=True)
            entry = out_dir / "program.pt2"
            with quiet():
                torch.export.save(program, str(entry))
            config["runner"] = "eager"
            fell_back = True
            config["inductor_note"] = (
                f"AOTInductor could not compile this model ({one_line(exc)[:300]}): the "
                "exported program runs eagerly"
            )
            eager = True
        else:
            if inductor_note:
                config["inductor_note"] = inductor_note
            config["inductor"] = settings
    stage("package" if not eager else "save")
    if fell_back and torch_device.startswith("cuda"):
        config["cuda_graphs"] = graphs_work(exported, example, torch_device)
        stage("graph check")
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
            self_check(runner, module, example, precision)
            stage("self-check")
        if torch_device.startswith("cuda"):
            config["cuda_graphs"] = graphs_work(runner, example, torch_device)
            stage("graph check")
        batches = wanted_batches(options, batch_symbol(graph_inputs), dims, config.get("pad_batch"))
        if batches and not getattr(module, "runs_loops", False):
            del runner
            build_static(
                module,
                graph_inputs,
                example,
                dims,
                batches,
                entry,
                precision,
                config,
                lambda prog, path: package_program(torch, prog, path, torch_device, options)[0],
                torch_device,
            )
            stage("static batches")
    config["build_stages_s"] = stages
    files = tuple(sorted(p.name for p in out_dir.iterdir()))
    return Payload(entry=entry.name, files=files, config=config)


def package_program(
    torch: Any, program: Any, entry: Path, torch_device: str, options: TargetOptions
) -> tuple[dict[str, Any], str]:
    """AOTInductor-compile ``program`` into ``entry`` with our Inductor settings, retried with
    Inductor's defaults when they fail; the settings used and why the defaults, if so."""
    settings = inductor_settings(torch, program, torch_device, options)
    try:
        with quiet():
            torch._inductor.aoti_compile_and_package(
                program, package_path=str(entry), inductor_configs=settings
            )
    except Exception as exc:
        if not settings:
            raise
        entry.unlink(missing_ok=True)
        with quiet():
            torch._inductor.aoti_compile_and_package(program, package_path=str(entry))
        return {}, f"built with Inductor's defaults: {one_line(exc)[:300]}"
    return settings, ""


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
    program = copy_program(program)
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
    if options.extra.get("cuda_coordinate_descent", False) and hasattr(
        config, "coordinate_descent_tuning"
    ):
        settings["coordinate_descent_tuning"] = True
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


def copy_program(program: Any) -> Any:
    """A deep copy of a ``torch.export`` program that still passes torch's verifier.

    ``copy.deepcopy`` renames a placeholder that shadows a Python builtin (``nn.Sequential``'s
    ``input`` becomes ``input_1``) but keeps the old name in the graph signature, and the next
    pass that verifies the program (``move_to_device_pass``) raises "Input spec name input does
    not match node name input_1" (torch 2.11 on the H100 and 2.13 here, 2026-12-06: the torch
    route then fell back to ONNX for every ``nn.Sequential``). The signature takes the new
    names; the program is called positionally, so nothing else sees them.
    """
    program = copy.deepcopy(program)
    nodes = [node.name for node in program.graph.nodes if node.op == "placeholder"]
    renamed: dict[str, str] = {}
    for spec, name in zip(program.graph_signature.input_specs, nodes, strict=False):
        old = getattr(spec.arg, "name", None)
        if old is not None and old != name:
            renamed[old] = name
            spec.arg.name = name
    for spec in program.graph_signature.output_specs:
        if getattr(spec.arg, "name", None) in renamed:
            spec.arg.name = renamed[spec.arg.name]
    return program

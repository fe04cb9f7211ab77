"""CUDA target: NVIDIA GPUs through PyTorch's ahead-of-time compiler (AOTInductor).

The payload is an AOTInductor package (``model.pt2``): ``torch.export`` of the partition, compiled
by Inductor into CUDA/Triton kernels and a C++ wrapper, loaded by the runtime with
``torch._inductor.aoti_load_package``. TensorRT cannot be installed on our machines, so this is
the GPU path we can run and verify (docs/gpu.md).

Where the program comes from:

- an ONNX subgraph (every partition, and every ONNX model): converted by our own op mapping
  (``ai_vmm.targets.cuda_convert``), with dynamic axes kept as ``torch.export`` dims;
- the torch frontend's own ``ExportedProgram`` when the model came from PyTorch and the whole
  model goes to the GPU (``TargetOptions.extra["torch_program"]``): no ONNX round trip.

Precision: fp32, fp16 or bf16 (weights and activations; inputs and outputs stay float32).
CUDA graphs: codegen tries to capture the package's run; where capture works and replays the
same outputs, the executor replays a graph per input shape (``config["cuda_graphs"]``).

PyTorch is imported lazily: importing this module costs nothing on a machine without it.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx_ir as ir

from ai_vmm.runtime.devices import CpuInfo, Device, Inventory
from ai_vmm.runtime.errors import CompileError
from ai_vmm.targets.base import (
    NodeSupport,
    Payload,
    QuantizationRequest,
    QuantizedPayload,
    Target,
    TargetOptions,
    devices_of,
)

NAME = "cuda"
PRECISIONS = ("fp32", "fp16", "bf16")
DEFAULT_MAX_DIM = 4096
"""Upper bound of a dynamic axis without an ``--input`` range (torch.export needs none, but a
bound keeps Inductor's guards and kernel choices sane)."""

# Dense tensor-core peaks (TFLOP/s) and memory bandwidth (GB/s) from NVIDIA's datasheets, used
# for the figures of a GPU that cannot be measured (planning for a profile) and for the
# precisions the micro-benchmark does not time.
GPU_SPECS: dict[str, dict[str, Any]] = {
    "H200": {"fp32": 67, "fp16": 989, "bf16": 989, "int8": 1979, "bandwidth": 4800},
    "H100": {"fp32": 67, "fp16": 989, "bf16": 989, "int8": 1979, "bandwidth": 3350},
    "A100": {"fp32": 19.5, "fp16": 312, "bf16": 312, "int8": 624, "bandwidth": 2039},
    "L40S": {"fp32": 91.6, "fp16": 362, "bf16": 362, "int8": 733, "bandwidth": 864},
    "L4": {"fp32": 30.3, "fp16": 121, "bf16": 121, "int8": 242, "bandwidth": 300},
    "A10": {"fp32": 31.2, "fp16": 125, "bf16": 125, "int8": 250, "bandwidth": 600},
    "T4": {"fp32": 8.1, "fp16": 65, "int8": 130, "bandwidth": 320},
}


def spec_figures(gpu_name: str) -> dict[str, Any] | None:
    """Datasheet figures for a GPU by (NVML/torch) name, or ``None`` when unknown."""
    upper = gpu_name.upper()
    for key in sorted(GPU_SPECS, key=len, reverse=True):
        if key in upper.replace("-", " ").split() or f" {key}" in f" {upper}":
            spec = GPU_SPECS[key]
            peaks = {p: spec[p] * 1000.0 for p in ("fp32", "fp16", "bf16", "int8") if p in spec}
            return {
                "peak_gflops": peaks,
                "bandwidth_gbps": float(spec["bandwidth"]),
                "overhead_us": 8.0,
                "source": f"spec: NVIDIA {key} datasheet (dense tensor-core figures)",
            }
    return None


class CudaTarget(Target):
    """NVIDIA GPUs, one device per CUDA index, through AOTInductor packages."""

    name = NAME
    package = "torch"
    keeps_outputs_on_device = True
    builds_on_device_only = True
    """AOTInductor compiles for the GPU it runs on: a plan for an absent GPU defers the build."""

    # -- discovery ------------------------------------------------------------------------

    def discover(self, cpu: CpuInfo) -> tuple[list[Device], str | None, str | None]:
        if not _nvidia_driver_present():
            # Importing torch takes seconds: skip it where no NVIDIA driver can be there.
            return [], None, "no NVIDIA driver on this machine (no /dev/nvidia*)"
        try:
            import torch
        except ImportError as exc:
            return [], None, f"PyTorch not importable ({exc}): pip install 'ai-vmm[torch]'"
        version = str(torch.__version__)
        if not torch.cuda.is_available():
            built = torch.version.cuda
            why = "a CPU-only PyTorch build" if built is None else "no CUDA GPU visible"
            return [], version, f"no CUDA device ({why})"
        devices = []
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            devices.append(
                Device(
                    NAME,
                    str(index),
                    "gpu",
                    str(props.name),
                    {
                        "compute_capability": f"{props.major}.{props.minor}",
                        "memory_bytes": int(props.total_memory),
                        "multiprocessors": int(props.multi_processor_count),
                        "torch_cuda": str(torch.version.cuda),
                    },
                )
            )
        return devices, version, None

    def available(self, inventory: Inventory) -> list[Device]:
        return devices_of(NAME, inventory)

    # -- capability -----------------------------------------------------------------------

    def capability(self, model: ir.Model, device: Device) -> dict[str, NodeSupport]:
        from ai_vmm.targets.cuda_convert import node_support

        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        support: dict[str, NodeSupport] = {}
        for node in model.graph:
            reason = node_support(node, opset)
            support[node.name or ""] = NodeSupport(reason is None, reason or "")
        return support

    def supports_op(self, domain: str, op_type: str) -> bool:
        """Fusions may produce any standard op our torch mapping has (Attention -> SDPA)."""
        from ai_vmm.targets.cuda_convert import OPS

        return domain in ("", "ai.onnx") and op_type in OPS

    def tuning_space(self, device: Device) -> list[dict[str, Any]]:
        # Graph replay usually wins at small batch; timing says whether it does here.
        return [{"cuda_graphs": False}]

    def prepare(self, model: ir.Model, options: TargetOptions) -> ir.Model:
        return model

    # -- figures for the cost model -------------------------------------------------------

    def measure_figures(self, device: Device) -> dict[str, Any]:
        """Micro-benchmark the GPU through torch: matmul per precision, a copy, a tiny op,
        and the host link (pinned host -> device copy)."""
        import torch

        dev = torch.device(f"cuda:{device.name}")
        peaks: dict[str, float] = {}
        n = 4096
        for precision, dtype in (
            ("fp32", torch.float32),
            ("fp16", torch.float16),
            ("bf16", torch.bfloat16),
        ):
            a = torch.randn(n, n, device=dev, dtype=dtype)
            b = torch.randn(n, n, device=dev, dtype=dtype)
            seconds = _cuda_seconds(lambda a=a, b=b: torch.matmul(a, b), dev)
            peaks[precision] = round(2.0 * n**3 / seconds / 1e9, 1)
        m = 1 << 26
        src = torch.empty(m, device=dev)
        dst = torch.empty(m, device=dev)
        seconds = _cuda_seconds(lambda: dst.copy_(src), dev)
        bandwidth = round(2 * 4 * m / seconds / 1e9, 1)
        tiny = torch.zeros(4, device=dev)
        overhead = round(_cuda_seconds(lambda: tiny.add_(1), dev, repeats=200) * 1e6, 2)
        # Pageable host memory, as the executor copies NumPy inputs (pinned would be ~2x).
        host = torch.empty(1 << 24, dtype=torch.float32)
        seconds = _cuda_seconds(lambda: host.to(dev), dev, repeats=10)
        link = round(4 * (1 << 24) / seconds / 1e9, 1)

        spec = spec_figures(device.full_name) or {}
        for precision, value in spec.get("peak_gflops", {}).items():
            peaks.setdefault(precision, value)
        return {
            "peak_gflops": peaks,
            "bandwidth_gbps": bandwidth,
            "overhead_us": overhead,
            "link_gbps": link,
            "source": f"measured on {device.full_name} (torch matmul/copy micro-benchmark)",
        }

    # -- codegen --------------------------------------------------------------------------

    def codegen(
        self, model: ir.Model, device: Device, options: TargetOptions, out_dir: Path
    ) -> Payload:
        return build_package(model, device, options, out_dir, options.precision)

    def quantize(
        self,
        model: ir.Model,
        device: Device,
        options: TargetOptions,
        request: QuantizationRequest,
        out_dir: Path,
    ) -> QuantizedPayload:
        """Reduced precision only (fp16 / bf16 weights and activations)."""
        if request.activations or request.weights:
            raise CompileError(
                "the cuda target does not quantize to INT8/INT4 (AOTInductor has no INT8 "
                "path here): use --precision fp16 or bf16 for the GPU"
            )
        if request.precision not in ("fp16", "bf16"):
            raise CompileError(f"cuda target: nothing to do for precision {request.precision}")
        payload = build_package(model, device, options, out_dir, request.precision)
        weighted = tuple(
            node.name or ""
            for node in model.graph
            if node.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm", "Attention")
        )
        return QuantizedPayload(
            payload=payload,
            quantized=weighted,
            kept_float={},
            method=f"torch {request.precision} weights and activations (AOTInductor)",
            notes=("inputs and outputs stay float32: cast on the GPU at entry and exit",),
        )


# --------------------------------------------------------------------------------------------
# Building the package
# --------------------------------------------------------------------------------------------


def _nvidia_driver_present() -> bool:
    """Whether an NVIDIA kernel driver shows itself (device nodes or its /proc entry)."""
    return Path("/proc/driver/nvidia").exists() or any(Path("/dev").glob("nvidia[0-9]*"))


def _torch_device(device: Device) -> str:
    """The torch device of ``device`` (``cuda:0``; a test may ask for ``cpu`` explicitly)."""
    return str(device.properties.get("torch_device") or f"cuda:{device.name}")


def build_package(
    model: ir.Model, device: Device, options: TargetOptions, out_dir: Path, precision: str
) -> Payload:
    """Export the model (or the frontend's torch program) and compile an AOTInductor package."""
    import torch

    from ai_vmm.targets.cuda_convert import ConversionError, to_torch, torch_dtype

    if precision not in PRECISIONS:
        raise CompileError(
            f"cuda target: unknown precision '{precision}' ({', '.join(PRECISIONS)})"
        )
    compute = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    if precision == "fp32" and torch.cuda.is_available():
        from ai_vmm.runtime.executors.cuda import strict_fp32

        strict_fp32(torch)  # Inductor picks kernels under the same flags the executor runs
    torch_device = _torch_device(device)
    if torch_device.startswith("cuda") and not torch.cuda.is_available():
        raise CompileError(
            "cuda target: no CUDA device here, and an AOTInductor package can only be built "
            "on a machine with the GPU (plan for it with --hardware, build on the device)"
        )
    graph_inputs = list(model.graph.inputs)
    source = "onnx"
    program_module = _torch_source(model, options, compute)
    if program_module is not None:
        module, source = program_module, "torch"
    else:
        try:
            module = to_torch(model, compute)
        except ConversionError as exc:
            raise CompileError(f"cuda target: {exc}") from exc
    if source == "onnx":
        module = module.eval()  # (an ExportedProgram's module has no train/eval modes)
    module = module.to(torch_device)
    bounds = options.extra.get("input_bounds") or {}
    sample_dims = options.extra.get("sample_dims") or {}
    example, dims = _example_inputs(graph_inputs, bounds, sample_dims, torch_device)
    arg_names = list(module.arg_names)
    program, dynamic_note = _export(module, example, arg_names, dims, graph_inputs)
    entry = out_dir / "model.pt2"
    started = time.perf_counter()
    with _quiet():
        torch._inductor.aoti_compile_and_package(program, package_path=str(entry))
    compile_s = time.perf_counter() - started
    static_shapes = _compiled_shapes(program, graph_inputs)
    config: dict[str, Any] = {
        "inputs": [
            {
                "name": value.name or "",
                "dtype": str(torch_dtype(value.dtype)).replace("torch.", ""),
                "shape": shape,
            }
            for value, shape in zip(graph_inputs, static_shapes, strict=True)
        ],
        "precision": precision,
        "source": source,
        "torch": str(torch.__version__),
        "device_type": torch_device.split(":")[0],
    }
    if dynamic_note:
        config["shape_note"] = dynamic_note
    if torch_device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(torch_device))
        config["compute_capability"] = f"{props.major}.{props.minor}"
        config["gpu"] = str(props.name)
        config["cuda_graphs"] = _graphs_work(entry, example, torch_device)
    logging.getLogger(__name__).debug("AOTInductor compile took %.1f s", compile_s)
    files = tuple(sorted(p.name for p in out_dir.iterdir()))
    return Payload(entry=entry.name, files=files, config=config)


def _torch_source(model: ir.Model, options: TargetOptions, compute: Any) -> Any:
    """The frontend's torch program as a module, when it computes exactly this graph."""
    program = options.extra.get("torch_program")
    if program is None:
        return None
    names = options.extra.get("torch_program_io")
    inputs = [v.name for v in model.graph.inputs]
    outputs = [v.name for v in model.graph.outputs]
    if not names or list(names[0]) != inputs or list(names[1]) != outputs:
        return None  # a partition, or a graph whose signature changed: use the ONNX graph
    return _program_module(program, inputs, compute)


def _program_module(program: Any, input_names: list[str | None], compute: Any) -> Any:
    """An ``nn.Module`` around an ExportedProgram: float32 in and out, ``compute`` inside."""
    import torch

    from ai_vmm.targets.cuda_convert import named_forward, python_names

    # A copy: the program's module shares its parameters with the user's model, which moving
    # them to the GPU (or to fp16) would change under the user's feet.
    inner = copy.deepcopy(program.module())
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


def _example_inputs(
    inputs: list[ir.Value],
    bounds: dict[str, list[Any]],
    sample_dims: dict[str, int],
    torch_device: str,
) -> tuple[list[Any], dict[str, tuple[int, int]]]:
    """Example tensors for ``torch.export`` and the (min, max) of every symbolic dimension.

    A dynamic axis gets size >= 2 in the example (torch.export specialises sizes 0 and 1).
    Values do not matter: the export traces with fake tensors.
    """
    import torch

    from ai_vmm.targets.cuda_convert import torch_dtype

    dims: dict[str, tuple[int, int]] = {}
    tensors = []
    for value in inputs:
        shape: list[int] = []
        limits = bounds.get(value.name or "") or []
        for axis, dim in enumerate(value.shape or []):
            if isinstance(dim, int):
                shape.append(dim)
                continue
            symbol = str(dim.value) if getattr(dim, "value", None) else f"{value.name}_{axis}"
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
            size = min(max(size, low, 2), high)
            shape.append(size)
        dtype = torch_dtype(value.dtype)
        if dtype.is_floating_point:
            tensors.append(torch.randn(shape, dtype=dtype, device=torch_device))
        else:
            tensors.append(torch.zeros(shape, dtype=dtype, device=torch_device))
    return tensors, dims


def _export(
    module: Any,
    example: list[Any],
    arg_names: list[str],
    dims: dict[str, tuple[int, int]],
    inputs: list[ir.Value],
) -> tuple[Any, str]:
    """``torch.export`` with named dims; if the model pins one, let export decide (AUTO)."""
    import torch
    from torch.export import Dim

    named = {s: Dim(_dim_name(s), min=lo, max=hi) for s, (lo, hi) in dims.items() if lo != hi}

    def shapes(auto: bool) -> Any:
        spec = []
        for value in inputs:
            axes: dict[int, Any] = {}
            for axis, dim in enumerate(value.shape or []):
                if isinstance(dim, int):
                    continue
                symbol = str(dim.value) if getattr(dim, "value", None) else f"{value.name}_{axis}"
                if symbol in named:
                    axes[axis] = Dim.AUTO if auto else named[symbol]
            spec.append(axes or None)
        return dict(zip(arg_names, spec, strict=True))

    with _quiet():
        try:
            return torch.export.export(
                module, tuple(example), dynamic_shapes=shapes(False), strict=False
            ), ""
        except Exception as first:
            try:
                program = torch.export.export(
                    module, tuple(example), dynamic_shapes=shapes(True), strict=False
                )
            except Exception as exc:
                raise CompileError(f"cuda target: torch.export failed: {_one_line(exc)}") from exc
            return program, f"some axes were pinned by the model: {_one_line(first)[:300]}"


def _dim_name(symbol: str) -> str:
    import re

    name = re.sub(r"\W", "_", symbol)
    return name if name and not name[0].isdigit() else f"d_{name}"


def _compiled_shapes(program: Any, inputs: list[ir.Value]) -> list[list[int | None]]:
    """Each input's shape in the exported program: ints where fixed, ``None`` where dynamic."""
    placeholders = [
        node
        for node in program.graph.nodes
        if node.op == "placeholder" and node.name in set(program.graph_signature.user_inputs)
    ]
    shapes = []
    for node in placeholders[: len(inputs)]:
        value = node.meta.get("val")
        shape = getattr(value, "shape", ())
        shapes.append([int(s) if isinstance(s, int) else None for s in shape])
    while len(shapes) < len(inputs):
        shapes.append([None] * len(inputs[len(shapes)].shape or []))
    return shapes


def _graphs_work(entry: Path, example: list[Any], torch_device: str) -> bool:
    """Whether the package runs under CUDA-graph capture and replays the same outputs."""
    import torch

    from ai_vmm.runtime.executors.cuda import capture

    try:
        runner = torch._inductor.aoti_load_package(str(entry), run_single_threaded=True)
        expected = runner(*example)
        graph = capture(runner, example, torch.device(torch_device))
        graph.graph.replay()
        got = [o.clone() for o in graph.outputs]
        return all(
            torch.equal(a, b) or torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-3)
            for a, b in zip(expected, got, strict=True)
        )
    except Exception:
        return False


def _cuda_seconds(fn: Any, device: Any, repeats: int = 20) -> float:
    import torch

    for _ in range(3):
        fn()
    torch.cuda.synchronize(device)
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize(device)
    return float(start.elapsed_time(end)) / 1000.0 / repeats


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep torch's export/compile chatter off the user's terminal."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


__all__ = ["GPU_SPECS", "CudaTarget", "build_package", "spec_figures"]

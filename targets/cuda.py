"""CUDA target: NVIDIA GPUs through PyTorch's ahead-of-time compiler (AOTInductor).

The payload is an AOTInductor package (``model.pt2``): ``torch.export`` of the partition, compiled
by Inductor into CUDA/Triton kernels and a C++ wrapper, loaded by the runtime with
``torch._inductor.aoti_load_package``. TensorRT cannot be installed on our machines, so this is
the GPU path we can run and verify (docs/gpu.md).

Where the program comes from (``ai_vmm.targets.cuda_build``): the torch frontend's own
``ExportedProgram`` when the model came from PyTorch and the whole model goes to the GPU, falling
back to the ONNX route (and saying why) when that fails; otherwise the ONNX (sub)graph converted
by our op mapping (``ai_vmm.targets.cuda_convert``), dynamic axes kept as ``torch.export`` dims.

Precision: fp32, fp16 or bf16 (weights and activations; inputs and outputs stay float32).
CUDA graphs: codegen tries to capture the package's run; where capture works and replays the
same outputs, the executor replays a graph per input shape (``config["cuda_graphs"]``).

Optional members the compiler may use (see ``ai_vmm.targets.base``): ``estimate`` (the cost at
given shapes before building, ``ai_vmm.targets.cuda_estimate``), ``float_baseline`` (a cheap
eager fp32 payload for the precision gate to compare against), ``measure_figures``.

PyTorch is imported lazily: importing this module costs nothing on a machine without it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
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
from ai_vmm.targets.cuda_build import PRECISIONS, build_package

NAME = "cuda"

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
        return self.capability_anywhere(model)

    def capability_anywhere(self, model: ir.Model) -> dict[str, NodeSupport]:
        """What the ONNX -> torch conversion takes: the same on every NVIDIA GPU."""
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

    def tuning_space(
        self, device: Device, config: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        # Graph replay usually wins at small batch; timing says whether it does here. A
        # payload with static-batch packages (targets/cuda_static.py) is also timed running
        # them: the compile's buckets at the samples' shapes decide where they are used.
        space: list[dict[str, Any]] = [{"cuda_graphs": False}]
        if config and config.get("static_batches"):
            space.append({"static_dispatch": True})
        return space

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

    def alternative_options(self, options: TargetOptions) -> TargetOptions | None:
        """The ONNX route, when the torch program's package failed the pipeline's verification."""
        extra = options.extra
        if extra.get("torch_program") is None or extra.get("cuda_source") == "onnx":
            return None
        return replace(options, extra={**extra, "cuda_source": "onnx"})

    def float_baseline(
        self, model: ir.Model, device: Device, options: TargetOptions, out_dir: Path
    ) -> Payload:
        """An fp32 payload that only exists to be compared against: the exported program, run
        eagerly (seconds to build; no Inductor compile). The precision gate's reference and
        speed baseline for an fp16/bf16 build; never the payload an artifact should ship."""
        return build_package(model, device, options, out_dir, "fp32", eager=True)

    def estimate(
        self,
        model: ir.Model,
        device: Device,
        dims: dict[str, int],
        *,
        precision: str = "fp32",
        figures: Mapping[str, Any] | None = None,
        host_io: bool = True,
    ) -> float | None:
        """Estimated seconds for one call at ``dims`` (symbolic dim sizes), before building:
        CUDA graphs on, NumPy in and out unless ``host_io`` is off (see ``estimate_shapes``)."""
        rows = self.estimate_shapes(
            model, device, [dims], precision=precision, figures=figures, host_io=host_io
        )
        return rows[0]["ms"] / 1000.0 if rows else None

    def estimate_shapes(
        self,
        model: ir.Model,
        device: Device,
        shapes: Sequence[Mapping[str, int]],
        *,
        precision: str = "fp32",
        figures: Mapping[str, Any] | None = None,
        host_io: bool = True,
    ) -> list[dict[str, Any]]:
        """Per shape, the estimate's parts in ms (``ai_vmm.targets.cuda_estimate``).

        ``figures``: the device's measured figures (the compiler caches them per machine);
        without them the datasheet's (optimistic: what the GPU could at best do), else a
        micro-benchmark here.
        """
        from ai_vmm.targets.cuda_estimate import estimate

        figures = figures or spec_figures(device.full_name) or self.measure_figures(device)
        return estimate(model, figures, precision, shapes, host_io=host_io)

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


def _nvidia_driver_present() -> bool:
    """Whether an NVIDIA kernel driver shows itself (device nodes or its /proc entry)."""
    return Path("/proc/driver/nvidia").exists() or any(Path("/dev").glob("nvidia[0-9]*"))


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


__all__ = ["GPU_SPECS", "PRECISIONS", "CudaTarget", "build_package", "spec_figures"]

"""The cuda executor as it was before the fix of issue 18 (commit 7445e31), unchanged, for
``scripts/gpu_crash_check.py --old`` to compare against. Not imported by ai_vmm.

Executor for cuda payloads: an AOTInductor package (``model.pt2``) run by PyTorch.

Inputs may be NumPy arrays (copied to the GPU) or torch tensors (used where they are: a tensor
that another GPU partition produced stays on the GPU). Outputs are NumPy arrays, except the
outputs named in ``config["device_outputs"]``, which stay torch tensors on the GPU because only
other GPU partitions read them (the compiler sets that list).

With ``config["cuda_graphs"]`` the executor captures one CUDA graph per input-shape signature
(the first call with a new shape captures, later calls replay): the inputs are copied into the
graph's static buffers and the package's kernels are launched as one graph.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from ai_vmm.runtime.errors import ArtifactError, DeviceError, InputError

_MAX_GRAPHS = 8
"""Captured graphs kept per executor (one per distinct input-shape signature)."""


class CudaExecutor:
    """Runs an AOTInductor package on one CUDA device (thread-safe ``run``)."""

    def __init__(
        self, entry: Path, device: str, config: dict[str, Any], outputs: tuple[str, ...]
    ) -> None:
        import torch

        self._torch = torch
        device_type = str(config.get("device_type", "cuda"))
        if device_type == "cuda":
            if not torch.cuda.is_available():
                raise DeviceError(
                    "this artifact runs on an NVIDIA GPU (cuda target) and PyTorch sees none here"
                )
            index = int(device) if str(device).isdigit() else 0
            if index >= torch.cuda.device_count():
                raise DeviceError(
                    f"the artifact needs cuda:{index}; this machine has "
                    f"{torch.cuda.device_count()} CUDA device(s)"
                )
            self._device = torch.device(f"cuda:{index}")
            _check_compatible(config, torch, self._device)
            if config.get("precision", "fp32") == "fp32":
                strict_fp32(torch)
        else:
            self._device = torch.device(device_type)
        specs = list(config.get("inputs", []))
        self._names = [str(spec["name"]) for spec in specs]
        # name -> the shape the package was compiled for (None where an axis is dynamic)
        self._shapes = {str(spec["name"]): list(spec.get("shape") or []) for spec in specs}
        self._outputs = list(outputs)
        self._keep = set(config.get("device_outputs", ()))
        self._use_graphs = bool(config.get("cuda_graphs")) and self._device.type == "cuda"
        try:
            self._runner = torch._inductor.aoti_load_package(
                str(entry), run_single_threaded=self._use_graphs
            )
        except Exception as exc:
            raise ArtifactError(
                f"PyTorch could not load the AOTInductor package {entry.name}: {_one_line(exc)}"
            ) from exc
        self._graphs: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()

    # The runtime's contract ----------------------------------------------------------------

    def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        torch = self._torch
        tensors = [self._to_device(name, inputs) for name in self._names]
        with self._lock, torch.inference_mode():
            if self._use_graphs:
                results = self._replay(tensors)
            else:
                try:
                    results = list(self._runner(*tensors))
                except Exception as exc:
                    raise InputError(f"the CUDA package failed to run: {_one_line(exc)}") from exc
            out = {}
            for name, value in zip(self._outputs, results, strict=True):
                out[name] = value if name in self._keep else value.cpu().numpy()
        return out

    # Internals -----------------------------------------------------------------------------

    def _to_device(self, name: str, inputs: dict[str, Any]) -> Any:
        torch = self._torch
        value = inputs[name]
        if isinstance(value, torch.Tensor):
            return value if value.device == self._device else value.to(self._device)
        array = np.ascontiguousarray(value)
        shape = self._shapes[name]
        if len(shape) != array.ndim or any(
            want is not None and want != got for want, got in zip(shape, array.shape, strict=False)
        ):
            raise InputError(
                f"input '{name}': shape {tuple(array.shape)} does not fit the GPU package, "
                f"compiled for {tuple('?' if s is None else s for s in shape)} (the model "
                f"fixed these axes at export; recompile with the shapes you need)"
            )
        return torch.from_numpy(array).to(self._device, non_blocking=False)

    def _replay(self, tensors: list[Any]) -> list[Any]:
        key = tuple((tuple(t.shape), t.dtype) for t in tensors)
        graph = self._graphs.get(key)
        if graph is None:
            if len(self._graphs) >= _MAX_GRAPHS:
                self._graphs.pop(next(iter(self._graphs)))
            try:
                graph = capture(self._runner, tensors, self._device)
            except Exception as exc:
                raise InputError(f"CUDA graph capture failed: {_one_line(exc)}") from exc
            self._graphs[key] = graph
        for static, value in zip(graph.inputs, tensors, strict=True):
            static.copy_(value, non_blocking=True)
        graph.graph.replay()
        return list(graph.outputs)

    def profile_ops(self, inputs: dict[str, Any], runs: int) -> list[dict[str, Any]]:
        """Per-kernel GPU time (ms per inference) from the PyTorch profiler."""
        torch = self._torch
        from torch.profiler import ProfilerActivity, profile

        self.run(inputs)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(runs):
                self.run(inputs)
            torch.cuda.synchronize(self._device)
        totals: dict[str, float] = {}
        for event in prof.key_averages():
            device_us = float(getattr(event, "device_time_total", 0.0) or 0.0)
            if device_us > 0:
                totals[event.key] = totals.get(event.key, 0.0) + device_us / 1000.0
        return [{"op": op, "ms": ms / runs} for op, ms in totals.items()]


def strict_fp32(torch: Any) -> None:
    """IEEE fp32 on the GPU: no TF32 in cuDNN convolutions and cuBLAS matmuls.

    PyTorch lets cuDNN use TF32 (10-bit mantissa) by default, which moves fp32 results by
    ~1e-3 relative; an fp32 payload must match the float reference. The switch is
    process-wide (PyTorch has no per-call setting), so it also applies to other torch code.
    """
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


class CapturedGraph:
    """A CUDA graph of one package run, with its static input and output tensors."""

    def __init__(self, graph: Any, inputs: list[Any], outputs: list[Any]) -> None:
        self.graph, self.inputs, self.outputs = graph, inputs, outputs


def capture(runner: Any, example: list[Any], device: Any) -> CapturedGraph:
    """Warm up on a side stream, then capture ``runner(*static_inputs)`` into a CUDA graph.

    The package must be loaded with ``run_single_threaded=True`` (AOTInductor's own locking
    does not survive capture).
    """
    import torch

    static = [t.clone() for t in example]
    stream = torch.cuda.Stream(device=device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(2):
            runner(*static)
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = runner(*static)
    return CapturedGraph(graph, static, list(outputs))


def _check_compatible(config: dict[str, Any], torch: Any, device: Any) -> None:
    """The package's PyTorch version and GPU architecture must match this machine."""
    built = str(config.get("torch", ""))
    here = str(torch.__version__)
    if built and built.split("+")[0] != here.split("+")[0]:
        raise DeviceError(
            f"the GPU package was built with PyTorch {built}; this machine has {here} "
            f"(AOTInductor packages are tied to the PyTorch version: recompile here)"
        )
    wanted = str(config.get("compute_capability", ""))
    props = torch.cuda.get_device_properties(device)
    have = f"{props.major}.{props.minor}"
    if wanted and wanted != have:
        raise DeviceError(
            f"the GPU package was built for compute capability {wanted} "
            f"({config.get('gpu', '?')}); {props.name} here is {have}: recompile on this GPU"
        )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:500] or type(exc).__name__

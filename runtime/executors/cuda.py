"""Executor for cuda payloads: an AOTInductor package (``model.pt2``) run by PyTorch.

Inputs may be NumPy arrays (staged through pinned host memory) or torch tensors (used where
they are: a tensor that another GPU partition produced stays on the GPU). Outputs are NumPy
arrays, except the outputs named in ``config["device_outputs"]``, which stay torch tensors on
the GPU because only other GPU partitions read them (the compiler sets that list).

With ``config["cuda_graphs"]`` the executor captures one CUDA graph per input-shape signature
(the first call with a new shape captures, later calls replay; at most ``_MAX_GRAPHS``, least
recently used dropped). How a graph stays valid for as long as it can be replayed:

- Every executor works on a CUDA stream of its own (``private_stream``): replays and captures
  are ordered on it, after the caller's stream and before it again.
- One capture at a time in the process (PyTorch's rule), in ``thread_local`` mode, so other
  threads may go on running while one captures.
- Each graph has its own memory pool. The cuBLAS/cuBLASLt workspaces are dropped before the
  capture (so the workspace the graph bakes in is allocated inside its own pool) and after it
  (so no later graph, ours or anyone's, bakes in memory that dies with this graph). Without
  that, a graph replays into a workspace that has since been freed and handed to someone else:
  an illegal memory access (issue 18), or silently wrong numbers. The drop waits until no run
  of ours outside a graph is using a workspace (``cuda_workspaces``: PyTorch's own race).
- Static inputs are allocated by us outside the graph's pool, contiguous, and every value
  is copied into them on our stream; outputs leave graph memory (to the host, or as a clone on
  the GPU) before the lock is released, so the next replay cannot overwrite what a caller holds.
- A capture that fails (other code in the process can invalidate it) is not fatal: the call
  runs without a graph on a freshly loaded package (the old model container is unusable after
  a run that failed inside a capture), and after ``_CAPTURE_TRIES`` failures that shape runs
  without a graph for good (``capture_errors`` says why).
- Dynamic axes are checked against the range the package was compiled for: AOTInductor does
  not check them, and a kernel run outside its range (e.g. 32-bit indexing chosen for a bound)
  reads or writes out of bounds.

``config["runner"] == "eager"`` runs a saved ``torch.export`` program eagerly instead of a
package (the cheap float baseline the compiler may ask for; see ``CudaTarget.float_baseline``).
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ai_vmm.runtime.errors import ArtifactError, DeviceError, InputError
from ai_vmm.runtime.executors import cuda_workspaces
from ai_vmm.runtime.executors.cuda_padding import Padding

_MAX_GRAPHS = 8
"""Captured graphs kept per executor (one per distinct input-shape signature)."""
_WARMUP_RUNS = 2
"""Plain runs on the executor's stream before a capture (lazy module loads, cuDNN choices)."""

_CAPTURE_TRIES = 2
"""Failed captures at one shape before that shape runs without a graph for good."""

_CAPTURE_LOCK = threading.Lock()
"""One CUDA-graph capture at a time in this process (PyTorch's documented restriction)."""


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
        self._cuda = self._device.type == "cuda"
        specs = list(config.get("inputs", []))
        self._names = [str(spec["name"]) for spec in specs]
        note = str(config.get("shape_note") or "")
        self._checks = {str(spec["name"]): _ShapeCheck(spec, note) for spec in specs}
        self._dtypes = {str(spec["name"]): str(spec.get("dtype", "")) for spec in specs}
        self._outputs = list(outputs)
        self._keep = set(config.get("device_outputs", ()))
        self._use_graphs = bool(config.get("cuda_graphs")) and self._cuda
        self._cudnn_benchmark = bool(config.get("cudnn_benchmark", False))
        pad = config.get("pad_batch")
        self._pad = Padding.of(pad, self._names, list(outputs)) if pad else None
        self._entry, self._runner_kind = entry, str(config.get("runner", "aoti"))
        self._runner = _load_runner(torch, entry, self._runner_kind, self._device)
        self._capture_failures: dict[tuple[tuple[int, ...], ...], int] = {}
        self.capture_errors: list[str] = []
        """Why captures failed in this executor (each one fell back to a plain run)."""
        self._stream = private_stream(torch, self._device) if self._cuda else None
        self._graphs: OrderedDict[tuple[tuple[int, ...], ...], CapturedGraph] = OrderedDict()
        self._lock = threading.Lock()
        self._static = _StaticBatches(entry, device, config, outputs)

    def __del__(self) -> None:
        stream = getattr(self, "_stream", None)
        if stream is not None:
            try:
                self._graphs.clear()
                release_stream(self._torch, stream)
            except Exception:  # interpreter shutdown: nothing to hand back to
                pass

    # The runtime's contract ----------------------------------------------------------------

    def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        torch = self._torch
        static = self._static.executor_for(inputs, self._names)
        if static is not None:
            return static.run(inputs)
        rows = None
        if self._pad is not None:
            inputs, rows = self._pad.pad(inputs, torch)
        inputs = self._prepare(inputs)
        with self._lock, torch.inference_mode(), self._on_stream() as caller:
            if self._use_graphs:
                results = self._replay(inputs)
            else:
                results = self._plain([self._to_device(n, inputs[n]) for n in self._names])
            out = self._deliver(results, caller)
        if rows is not None and self._pad is not None:
            out = self._pad.cut(out, rows, torch)
        return out

    @property
    def static_calls(self) -> dict[int, int]:
        """Calls each static-batch package ran, by batch (``config["static_batches"]``)."""
        return dict(self._static.calls)

    # Internals -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _on_stream(self) -> Iterator[Any]:
        """Run on the executor's stream, ordered after the caller's stream (which produced any
        torch inputs) and before it (which reads any device outputs)."""
        if self._stream is None:
            yield None
            return
        torch = self._torch
        caller = torch.cuda.current_stream(self._device)
        self._stream.wait_stream(caller)
        with torch.cuda.stream(self._stream):
            yield caller
        caller.wait_stream(self._stream)

    def _prepare(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Every input present, of the element type the package reads (a kernel handed int32
        where it reads int64 reads past the buffer), and of a shape it was compiled for."""
        torch = self._torch
        sizes: dict[str, tuple[int, str]] = {}
        prepared: dict[str, Any] = {}
        for name in self._names:
            if name not in inputs:
                raise InputError(f"missing input '{name}'")
            value = inputs[name]
            want = self._dtypes[name]
            if isinstance(value, torch.Tensor):
                have = str(value.dtype).replace("torch.", "")
                if want and have != want:
                    _same_kind(name, have, want)
                    value = value.to(getattr(torch, want))
            else:
                value = np.asarray(value)
                have = value.dtype.name
                if want and have != want:
                    _same_kind(name, have, want)
                    value = value.astype(want)
            self._checks[name].check(name, tuple(int(s) for s in value.shape), sizes)
            prepared[name] = value
        return prepared

    def _to_device(self, name: str, value: Any) -> Any:
        torch = self._torch
        if isinstance(value, torch.Tensor):
            if value.device != self._device:
                value = value.to(self._device, non_blocking=True)
            # AOTInductor kernels assume the layout they were compiled for: dense, row-major.
            return value.contiguous()
        array = np.ascontiguousarray(value)
        host = torch.from_numpy(array)
        if not self._cuda:
            return host
        return _pinned_copy(torch, host).to(self._device, non_blocking=True)

    def _plain(self, tensors: list[Any]) -> list[Any]:
        try:
            with cuda_workspaces.shared():
                return list(self._runner(*tensors))
        except Exception as exc:
            raise InputError(f"the CUDA package failed to run: {_one_line(exc)}") from exc

    def _recover_from_capture(self, key: tuple[tuple[int, ...], ...], exc: Exception) -> None:
        """A capture failed: this call (and, after ``_CAPTURE_TRIES`` failures, every call at
        this shape) runs without a graph, on a freshly loaded package.

        Other code in the process can invalidate a capture (on the H200, another thread
        clearing cuBLAS workspaces and emptying the allocator's cache while ours captured). The
        package's model container is not reusable after a run that failed inside a capture:
        every later call failed too, and then an illegal memory access aborted the process
        (docs/gpu.md, 2026-12-04 night). So the container is replaced. The graphs captured
        from the old one stay valid (each holds the runner whose weights its kernels read,
        ``CapturedGraph``), but they would keep a second copy of the weights on the GPU until
        evicted: they are dropped, and recaptured from the new container on their next call.
        """
        torch = self._torch
        self._capture_failures[key] = self._capture_failures.get(key, 0) + 1
        self.capture_errors.append(_one_line(exc))
        warnings.warn(
            f"CUDA graph capture failed at input shapes {list(key)} (try "
            f"{self._capture_failures[key]} of {_CAPTURE_TRIES}); running without a graph: "
            f"{_one_line(exc)[:200]}",
            RuntimeWarning,
            stacklevel=4,
        )
        try:
            if self._cuda:
                torch.cuda.synchronize(self._device)
        except Exception as sync_error:
            raise DeviceError(
                f"the GPU is in an error state after a failed CUDA graph capture: "
                f"{_one_line(sync_error)}"
            ) from sync_error
        self._graphs.clear()  # the stream is idle (synchronized above)
        self._runner = _load_runner(torch, self._entry, self._runner_kind, self._device)

    def _replay(self, inputs: dict[str, Any]) -> list[Any]:
        torch = self._torch
        # Element types are the package's after _prepare: the shapes are the signature.
        key = tuple(tuple(int(s) for s in inputs[n].shape) for n in self._names)
        graph = self._graphs.get(key)
        if graph is None:
            tensors = [self._to_device(name, inputs[name]) for name in self._names]
            if self._capture_failures.get(key, 0) >= _CAPTURE_TRIES:
                return self._plain(tensors)  # before evicting a graph for one never made
            if len(self._graphs) >= _MAX_GRAPHS:
                # Replays on our stream may still run: let them finish before the pool goes.
                assert self._stream is not None
                self._stream.synchronize()
                self._graphs.popitem(last=False)
            try:
                graph = capture(
                    self._runner,
                    tensors,
                    self._device,
                    self._stream,
                    cudnn_benchmark=self._cudnn_benchmark,
                )
            except Exception as exc:
                self._recover_from_capture(key, exc)
                return self._plain(tensors)
            self._graphs[key] = graph
        else:
            self._graphs.move_to_end(key)
            for static, name in zip(graph.inputs, self._names, strict=True):
                value = inputs[name]
                if isinstance(value, torch.Tensor):
                    static.copy_(value, non_blocking=True)
                else:
                    host = torch.from_numpy(np.ascontiguousarray(value))
                    static.copy_(_pinned_copy(torch, host), non_blocking=True)
        graph.graph.replay()
        return list(graph.outputs)

    def _deliver(self, results: list[Any], caller: Any) -> dict[str, Any]:
        """Outputs out of graph-owned memory: kept ones cloned on the GPU, the rest to the host
        (pinned buffers, one synchronization for all of them)."""
        torch = self._torch
        out: dict[str, Any] = {}
        pending: list[tuple[str, Any]] = []
        for name, value in zip(self._outputs, results, strict=True):
            if name in self._keep:
                kept = value.clone() if self._use_graphs else value
                if caller is not None:
                    kept.record_stream(caller)
                out[name] = kept
            elif self._cuda and value.device.type == "cuda":
                host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
                host.copy_(value, non_blocking=True)
                pending.append((name, host))
            else:
                out[name] = value.detach().cpu().numpy()
        if pending:
            assert self._stream is not None
            self._stream.synchronize()
            for name, host in pending:
                out[name] = host.numpy()
        return out

    def profile_ops(self, inputs: dict[str, Any], runs: int) -> list[dict[str, Any]]:
        """Per-kernel GPU time (ms per inference) from the PyTorch profiler."""
        self.run(inputs)
        totals = profile_kernels(lambda: self.run(inputs), runs, self._device)
        return [{"op": op, "ms": ms} for op, ms in totals.items()]


def profile_kernels(call: Any, runs: int, device: Any = None) -> dict[str, float]:
    """GPU ms per call of each kernel (summed by name) over ``runs`` calls of ``call``, from
    the PyTorch profiler's CUDA activity (kernels inside CUDA-graph replays included)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            call()
        torch.cuda.synchronize(device)
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        device_us = float(getattr(event, "device_time_total", 0.0) or 0.0)
        if device_us > 0:
            totals[event.key] = totals.get(event.key, 0.0) + device_us / 1000.0 / runs
    return totals


_NOT_STATIC = ("static_batches", "static_dispatch", "static_note", "pad_batch", "shape_note")
"""Config keys of the dynamic package that a static package's executor does not take."""


class _StaticBatches:
    """The static-batch packages beside the dynamic one (``config["static_batches"]``,
    ``targets/cuda_static.py``), used where ``config["static_dispatch"]`` says so (the
    compile's timing turns it on where they win): a call whose shapes fit one runs on it, each
    loaded on first use as an executor of its own (its own CUDA graphs and stream)."""

    def __init__(
        self, entry: Path, device: str, config: dict[str, Any], outputs: tuple[str, ...]
    ) -> None:
        specs = (config.get("static_batches") or {}) if config.get("static_dispatch") else {}
        self.specs = {int(batch): spec for batch, spec in specs.items()}
        self.checks = {
            batch: {str(s["name"]): _ShapeCheck(s) for s in spec["inputs"]}
            for batch, spec in self.specs.items()
        }
        self.entry, self.device, self.config, self.outputs = entry, device, config, outputs
        self.loaded: dict[int, CudaExecutor] = {}
        self.calls: dict[int, int] = {}
        """Calls each static package ran (tests and reports read it)."""
        self.lock = threading.Lock()

    def executor_for(self, inputs: dict[str, Any], names: list[str]) -> CudaExecutor | None:
        if not self.specs or not names:
            return None
        shape = getattr(inputs.get(names[0]), "shape", None)
        if not shape:
            return None
        batch = int(shape[0])
        checks = self.checks.get(batch)
        if checks is None:
            return None
        try:
            sizes: dict[str, tuple[int, str]] = {}
            for name in names:
                value = inputs.get(name)
                if value is None:
                    return None  # the dynamic path says what is missing
                checks[name].check(name, tuple(int(s) for s in value.shape), sizes)
        except InputError:
            return None
        with self.lock:
            executor = self.loaded.get(batch)
            if executor is None:
                spec = self.specs[batch]
                config = {k: v for k, v in self.config.items() if k not in _NOT_STATIC}
                config["inputs"] = spec["inputs"]
                config["cuda_graphs"] = bool(spec.get("cuda_graphs"))
                executor = CudaExecutor(
                    self.entry.with_name(str(spec["entry"])), self.device, config, self.outputs
                )
                self.loaded[batch] = executor
            self.calls[batch] = self.calls.get(batch, 0) + 1
        return executor


class _ShapeCheck:
    """One input's compiled shape: fixed sizes, dynamic ranges and shared symbols."""

    def __init__(self, spec: dict[str, Any], note: str = "") -> None:
        self.note = note
        """How the export came by its ranges, when it did not take the ones asked for."""
        self.shape = list(spec.get("shape") or [])
        self.ranges = {
            int(a): (int(r[0]), int(r[1])) for a, r in (spec.get("ranges") or {}).items()
        }
        self.symbols = {int(a): str(s) for a, s in (spec.get("symbols") or {}).items()}

    def check(self, name: str, shape: tuple[int, ...], sizes: dict[str, tuple[int, str]]) -> None:
        want = tuple("?" if s is None else s for s in self.shape)
        if len(shape) != len(self.shape) or any(
            w is not None and w != g for w, g in zip(self.shape, shape, strict=False)
        ):
            raise InputError(
                f"input '{name}': shape {shape} does not fit the GPU package, compiled for "
                f"{want} (the model fixed these axes at export; recompile with the shapes you "
                f"need)"
            )
        for axis, (low, high) in self.ranges.items():
            if not low <= shape[axis] <= high:
                raise InputError(
                    f"input '{name}': axis {axis} is {shape[axis]}, outside the range "
                    f"{low}..{high} the GPU package was compiled for (recompile with "
                    f"--input giving the sizes you need)"
                    + (f"; the export said: {self.note[:600]}" if self.note else "")
                )
        for axis, symbol in self.symbols.items():
            seen = sizes.setdefault(symbol, (shape[axis], name))
            if seen[0] != shape[axis]:
                raise InputError(
                    f"input '{name}': axis {axis} is {shape[axis]} but '{seen[1]}' has "
                    f"{seen[0]} on the same dimension '{symbol}'"
                )


def strict_fp32(torch: Any) -> None:
    """IEEE fp32 on the GPU: no TF32 in cuDNN convolutions and cuBLAS matmuls.

    PyTorch lets cuDNN use TF32 (10-bit mantissa) by default, which moves fp32 results by
    ~1e-3 relative; an fp32 payload must match the float reference. The switch is
    process-wide (PyTorch has no per-call setting), so it also applies to other torch code.
    """
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


class CapturedGraph:
    """A CUDA graph of one package run, with its static input and output tensors, and the
    package runner it was captured from: the graph's kernels read that runner's weights, so
    the runner must live as long as the graph."""

    def __init__(self, graph: Any, inputs: list[Any], outputs: list[Any], runner: Any) -> None:
        self.graph, self.inputs, self.outputs, self.runner = graph, inputs, outputs, runner


def capture(
    runner: Any,
    example: list[Any],
    device: Any,
    stream: Any = None,
    *,
    cudnn_benchmark: bool = False,
) -> CapturedGraph:
    """Capture ``runner(*static_inputs)`` into a CUDA graph on ``stream`` (module doc: why so).

    The package must be loaded with ``run_single_threaded=True`` (AOTInductor's own locking
    does not survive capture). ``example`` gives the shapes and the first values. With
    ``cudnn_benchmark`` the warm-up lets cuDNN time its convolution algorithms for these
    shapes; the graph keeps the fastest (replays never call cuDNN again).
    """
    import torch

    own = stream is None
    stream = private_stream(torch, device) if stream is None else stream
    # The example may come from the caller's stream: copy it only once that work is done.
    stream.wait_stream(torch.cuda.current_stream(device))
    with _CAPTURE_LOCK, torch.cuda.stream(stream), _cudnn_flags(torch, cudnn_benchmark):
        static = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in example]
        for buffer, value in zip(static, example, strict=True):
            buffer.copy_(value)
        for _ in range(_WARMUP_RUNS):
            with cuda_workspaces.shared():
                runner(*static)
        stream.synchronize()
        cuda_workspaces.clear_workspaces(torch)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
                outputs = list(runner(*static))
        finally:
            cuda_workspaces.clear_workspaces(torch)
            if own:
                release_stream(torch, stream)
    return CapturedGraph(graph, static, outputs, runner)


@contextlib.contextmanager
def _cudnn_flags(torch: Any, benchmark: bool) -> Iterator[None]:
    """cuDNN's autotuner on for the warm-up and capture only (process-wide flag, restored)."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = benchmark or before
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


_FREE_STREAMS: dict[int, list[Any]] = {}
_STREAMS_LOCK = threading.Lock()


def private_stream(torch: Any, device: Any) -> Any:
    """A CUDA stream for one executor at a time.

    Streams come from PyTorch's pool and are handed back when the executor goes
    (``release_stream``), so that executors do not walk the 32 pooled streams round-robin onto
    ones other code is using. (A stream created outside the pool, through the CUDA runtime,
    would be safer still; on the GPU machine the first try of that ended in a crash that
    could not be traced within the session, see docs/gpu.md.)
    """
    index = int(torch.device(device).index or 0)
    with _STREAMS_LOCK:
        free = _FREE_STREAMS.get(index)
        if free:
            return free.pop()
    return torch.cuda.Stream(device=device)


def release_stream(torch: Any, stream: Any) -> None:
    """Give a stream from ``private_stream`` back for reuse."""
    index = int(stream.device.index or 0)
    with _STREAMS_LOCK:
        _FREE_STREAMS.setdefault(index, []).append(stream)


def _pinned_copy(torch: Any, host: Any) -> Any:
    """``host`` in page-locked memory (PyTorch's caching host allocator), so the copy to the
    GPU is one DMA, not a staged pageable copy."""
    pinned = torch.empty(host.shape, dtype=host.dtype, pin_memory=True)
    pinned.copy_(host)
    return pinned


_KINDS = {"f": "float", "i": "integer", "u": "integer", "b": "bool"}


def _same_kind(name: str, have: str, want: str) -> None:
    """Casting between widths of one kind is what the user meant; across kinds it is not."""
    kinds = []
    for dtype in (have, want):
        try:
            kinds.append(_KINDS.get(np.dtype("float16" if dtype == "bfloat16" else dtype).kind))
        except TypeError:
            kinds.append(None)
    if kinds[0] is None or kinds[0] != kinds[1]:
        raise InputError(f"input '{name}': element type {have}, the model takes {want}")


def _load_runner(torch: Any, entry: Path, runner: str, device: Any) -> Any:
    from ai_vmm.runtime.executors.cuda_load import load_package

    try:
        if runner == "eager":
            return torch.export.load(str(entry)).module()
        # Single-threaded: our lock serializes calls, and capture needs it.
        return load_package(torch, entry, device)
    except Exception as exc:
        raise ArtifactError(
            f"PyTorch could not load the GPU package {entry.name}: {_one_line(exc)}"
        ) from exc


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

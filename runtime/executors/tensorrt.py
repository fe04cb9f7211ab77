"""Executor for TensorRT payloads: a serialized engine (``model.engine``) and ``engine.json``.

Not verified in our environment: TensorRT cannot be installed on our dev or GPU machines, so
this is written against the TensorRT 10 Python API documentation (see ``docs/tensorrt.md``);
the CUDA parts (GPU listing, device buffers, the stream) did run on an H100 through
cuda-python.

Loading checks ``engine.json`` before TensorRT sees the engine: an engine deserializes only
with the TensorRT version that built it, on a GPU of the same compute capability, and a failed
check is a one-line ``DeviceError`` rather than TensorRT's own error log. Device memory and the
stream come from cuda-python (``cuda.bindings.runtime``, NVIDIA's CUDA bindings, which
TensorRT's own Python samples use): the runtime floor imports no torch.

A run sets each input's shape (``set_input_shape``), copies the inputs into device buffers
(kept between runs, grown when a shape needs more), binds every I/O tensor by address
(``set_tensor_address``), enqueues ``execute_async_v3`` on the executor's stream, copies the
outputs back and synchronizes. TensorRT 10 removed ``execute_async_v2`` and binding indices, so
tensors are bound by name. One execution context serves every call, under a lock.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ai_vmm.runtime.errors import ArtifactError, DeviceError, InputError

ENGINE_INFO = "engine.json"
"""The file beside the engine that says what built it (written by ``targets/tensorrt.py``)."""
ENGINE_INFO_FORMAT = 1
MIN_TENSORRT_MAJOR = 10
"""The oldest TensorRT this code is written for (name-based I/O, ``execute_async_v3``)."""


@dataclass(frozen=True)
class CudaGpu:
    """One CUDA GPU, by its CUDA device index (the index ``cudaSetDevice`` takes)."""

    index: int
    name: str
    compute_capability: str
    """``major.minor``, e.g. ``"9.0"`` for Hopper."""
    memory_bytes: int


def cudart() -> Any:
    """cuda-python's CUDA runtime module (``cuda.bindings.runtime``; ``cuda.cudart`` before 12.6).

    Raises ``ImportError`` when cuda-python is not installed.
    """
    try:
        from cuda.bindings import runtime

        return runtime
    except ImportError:
        from cuda import cudart as legacy

        return legacy


def _call(rt: Any, result: Any, what: str) -> Any:
    """Unpack a cuda-python ``(error, value...)`` result; raise ``RuntimeError`` on an error."""
    parts = result if isinstance(result, tuple) else (result,)
    err, rest = parts[0], parts[1:]
    if err != rt.cudaError_t.cudaSuccess:
        raise RuntimeError(f"{what} failed: {getattr(err, 'name', err)}")
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else rest


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        value = bytes(value).split(b"\0", 1)[0].decode(errors="replace")
    return str(value).strip()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _cudart_gpus() -> list[CudaGpu]:
    rt = cudart()
    count = int(_call(rt, rt.cudaGetDeviceCount(), "cudaGetDeviceCount"))
    gpus = []
    for index in range(count):
        prop = _call(rt, rt.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
        gpus.append(
            CudaGpu(
                index=index,
                name=_text(prop.name),
                compute_capability=f"{int(prop.major)}.{int(prop.minor)}",
                memory_bytes=int(prop.totalGlobalMem),
            )
        )
    return gpus


def set_current_device(index: int) -> None:
    """Make CUDA GPU ``index`` current for the calling thread (``ImportError`` without
    cuda-python, ``RuntimeError`` when CUDA refuses)."""
    rt = cudart()
    _call(rt, rt.cudaSetDevice(index), f"cudaSetDevice({index})")


def _visible_indices(value: str | None) -> list[int] | None:
    """``CUDA_VISIBLE_DEVICES`` as NVML indices, or ``None`` when unset or not plain indices."""
    if value is None or not value.strip():
        return None
    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        return None  # UUIDs or MIG names: no mapping attempted


def _nvml_gpus() -> list[CudaGpu]:
    import pynvml

    pynvml.nvmlInit()
    try:
        found = []
        for index in range(int(pynvml.nvmlDeviceGetCount())):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            found.append(
                CudaGpu(
                    index=index,
                    name=_text(pynvml.nvmlDeviceGetName(handle)),
                    compute_capability=f"{int(major)}.{int(minor)}",
                    memory_bytes=int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
                )
            )
    finally:
        pynvml.nvmlShutdown()
    visible = _visible_indices(os.environ.get("CUDA_VISIBLE_DEVICES"))
    if visible is not None:
        by_index = {gpu.index: gpu for gpu in found}
        found = [by_index[i] for i in visible if i in by_index]
    return [
        CudaGpu(cuda_index, gpu.name, gpu.compute_capability, gpu.memory_bytes)
        for cuda_index, gpu in enumerate(found)
    ]


def cuda_gpus() -> tuple[list[CudaGpu], str | None]:
    """The CUDA GPUs here and, when there are none, why. Never raises.

    cuda-python first: it numbers GPUs exactly as CUDA does. NVML (``nvidia-ml-py``) otherwise;
    it numbers them in PCI bus order, which is CUDA's order with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``
    or a single GPU (``CUDA_VISIBLE_DEVICES`` given as indices is applied).
    """
    reasons = []
    for source, lister in (("cuda-python", _cudart_gpus), ("NVML", _nvml_gpus)):
        try:
            gpus = lister()
        except ImportError as exc:
            reasons.append(f"{source} not installed ({_one_line(exc)})")
            continue
        except Exception as exc:
            reasons.append(f"{source}: {_one_line(exc)}")
            continue
        if gpus:
            return gpus, None
        reasons.append(f"{source}: no CUDA GPU found")
    return [], "; ".join(reasons)


def read_engine_info(path: Path) -> dict[str, Any]:
    """Read and validate ``engine.json``; ``ArtifactError`` if missing, unreadable or foreign."""
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(
            f"{path.name} is missing beside the TensorRT engine: the artifact is incomplete "
            "(recompile it)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path.name} is unreadable: {_one_line(exc)}") from exc
    if not isinstance(info, dict):
        raise ArtifactError(f"{path.name} is not a JSON object")
    if info.get("format") != ENGINE_INFO_FORMAT:
        raise ArtifactError(
            f"{path.name} has format {info.get('format')!r}; this runtime reads format "
            f"{ENGINE_INFO_FORMAT} (recompile, or use the ai-vmm version that built it)"
        )
    for key in ("tensorrt", "compute_capability"):
        if not isinstance(info.get(key), str) or not info[key]:
            raise ArtifactError(f"{path.name} lacks '{key}'")
    return info


def check_engine_info(
    info: Mapping[str, Any], *, tensorrt_version: str, compute_capability: str, gpu_name: str = ""
) -> str:
    """Check that an engine described by ``info`` can load here; return a one-line summary.

    A TensorRT engine (built without version or hardware compatibility, as ours are) loads only
    with the exact TensorRT version that built it and on a GPU of the same compute capability.
    Raises ``DeviceError`` naming both sides and what to do.
    """
    built_with = str(info["tensorrt"])
    built_for = str(info["compute_capability"])
    built_gpu = str(info.get("gpu") or "a GPU")
    if built_with != tensorrt_version:
        raise DeviceError(
            f"the TensorRT engine was built with TensorRT {built_with}, this machine has "
            f"TensorRT {tensorrt_version}: install tensorrt=={built_with} or recompile here"
        )
    if built_for != compute_capability:
        here = f"{gpu_name} " if gpu_name else ""
        raise DeviceError(
            f"the TensorRT engine was built for compute capability {built_for} ({built_gpu}), "
            f"this GPU {here}has {compute_capability}: recompile on this GPU"
        )
    return f"TensorRT {built_with} engine for compute capability {built_for} ({built_gpu})"


def profile_message(name: str, shape: tuple[int, ...], profile: Any) -> str:
    """Why ``set_input_shape`` refused ``shape``: the engine's range for input ``name``."""
    low, _, high = (tuple(int(d) for d in dims) for dims in profile)
    rank = f"rank {len(low)}" if len(shape) != len(low) else ""
    return (
        f"input '{name}' has shape {list(shape)}, outside the TensorRT engine's range "
        f"{list(low)}..{list(high)}{' (' + rank + ')' if rank else ''}: recompile with "
        f"--input {name}[...] bounds that cover it"
    )


def device_index(device: str) -> int:
    """The CUDA index of a ``tensorrt`` device name (``"0"``, ``"1"`` ...)."""
    try:
        index = int(device)
    except ValueError:
        raise DeviceError(
            f"TensorRT device '{device}' is not a CUDA GPU index (expected 0, 1, ...)"
        ) from None
    if index < 0:
        raise DeviceError(f"TensorRT device '{device}' is not a CUDA GPU index")
    return index


class CudaStream:
    """One GPU's stream and named device buffers, through cuda-python (not thread-safe).

    Buffers are kept per tensor name and reallocated only when a run needs more bytes, so a
    steady shape costs no allocation.
    """

    def __init__(self, index: int) -> None:
        try:
            self._rt = cudart()
        except ImportError as exc:
            raise DeviceError(
                f"the TensorRT executor needs cuda-python for device memory "
                f"(pip install cuda-python): {_one_line(exc)}"
            ) from exc
        self.index = index
        self.activate()
        self._stream = _call(self._rt, self._rt.cudaStreamCreate(), "cudaStreamCreate")
        self._buffers: dict[str, tuple[int, int]] = {}

    @property
    def handle(self) -> int:
        """The stream as the integer handle TensorRT's ``execute_async_v3`` takes."""
        return int(self._stream)

    def activate(self) -> None:
        """Make this GPU current for the calling thread (CUDA's current device is per thread)."""
        _call(self._rt, self._rt.cudaSetDevice(self.index), f"cudaSetDevice({self.index})")

    def buffer(self, name: str, nbytes: int) -> int:
        """The device address of buffer ``name``, at least ``nbytes`` long (at least 1 byte)."""
        need = max(int(nbytes), 1)
        held = self._buffers.get(name)
        if held is not None and held[1] >= need:
            return held[0]
        if held is not None:
            _call(self._rt, self._rt.cudaFree(held[0]), "cudaFree")
            del self._buffers[name]
        address = int(_call(self._rt, self._rt.cudaMalloc(need), f"cudaMalloc({need})"))
        self._buffers[name] = (address, need)
        return address

    def to_device(self, name: str, array: np.ndarray) -> int:
        """Enqueue a copy of C-contiguous ``array`` into buffer ``name``; return its address.

        ``array`` must stay alive until :meth:`synchronize`.
        """
        address = self.buffer(name, array.nbytes)
        if array.nbytes:
            kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
            _call(
                self._rt,
                self._rt.cudaMemcpyAsync(
                    address, array.ctypes.data, array.nbytes, kind, self._stream
                ),
                "cudaMemcpyAsync (host to device)",
            )
        return address

    def to_host(self, out: np.ndarray, address: int) -> None:
        """Enqueue a copy from ``address`` into C-contiguous ``out``."""
        if out.nbytes:
            kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
            _call(
                self._rt,
                self._rt.cudaMemcpyAsync(out.ctypes.data, address, out.nbytes, kind, self._stream),
                "cudaMemcpyAsync (device to host)",
            )

    def synchronize(self) -> None:
        """Wait for everything enqueued on the stream."""
        _call(self._rt, self._rt.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def close(self) -> None:
        """Free the buffers and the stream (safe to call twice)."""
        buffers, self._buffers = self._buffers, {}
        for address, _ in buffers.values():
            self._rt.cudaFree(address)
        stream, self._stream = self._stream, None
        if stream is not None:
            self._rt.cudaStreamDestroy(stream)


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise DeviceError(
            f"artifact needs TensorRT, which is not importable here: {_one_line(exc)}"
        ) from exc
    return trt


def _numpy_dtype(trt: Any, dtype: Any, name: str) -> np.dtype[Any]:
    try:
        return np.dtype(trt.nptype(dtype))
    except (TypeError, KeyError):
        raise ArtifactError(
            f"TensorRT engine tensor '{name}' has type {dtype}, which has no numpy type "
            "(bf16/fp8/int4 I/O is not supported by this executor)"
        ) from None


class TensorRtExecutor:
    """Runs a serialized TensorRT engine on one CUDA GPU (thread-safe ``run``)."""

    def __init__(
        self, entry: Path, device: str, config: dict[str, Any], outputs: tuple[str, ...]
    ) -> None:
        info = read_engine_info(entry.parent / ENGINE_INFO)
        trt = _import_tensorrt()
        index = device_index(device)
        gpus, note = cuda_gpus()
        gpu = next((g for g in gpus if g.index == index), None)
        if gpu is None:
            seen = ", ".join(f"{g.index}: {g.name}" for g in gpus) or note or "none"
            raise DeviceError(f"CUDA GPU {index} is not present here (GPUs: {seen})")
        check_engine_info(
            info,
            tensorrt_version=str(trt.__version__),
            compute_capability=gpu.compute_capability,
            gpu_name=gpu.name,
        )
        self._cuda = CudaStream(index)
        try:
            self._runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
            engine = self._runtime.deserialize_cuda_engine(entry.read_bytes())
            if engine is None:
                raise ArtifactError(
                    f"TensorRT could not deserialize {entry.name} (corrupt engine?)"
                )
            context = engine.create_execution_context()
            if context is None:
                raise DeviceError(
                    f"TensorRT could not create an execution context on GPU {index} "
                    "(out of GPU memory?)"
                )
        except BaseException:
            self._cuda.close()
            raise
        self._engine, self._context = engine, context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._engine_outputs = [n for n in names if n not in self._inputs]
        unknown = [n for n in outputs if n not in self._engine_outputs]
        if unknown:
            raise ArtifactError(
                f"the TensorRT engine has no output {', '.join(unknown)} "
                f"(it has {', '.join(self._engine_outputs)})"
            )
        self._outputs = list(outputs) or list(self._engine_outputs)
        self._dtypes = {n: _numpy_dtype(trt, engine.get_tensor_dtype(n), n) for n in names}
        self._config = dict(config)
        self._lock = threading.Lock()

    def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._cuda.activate()
            held: list[np.ndarray] = []
            for name in self._inputs:
                if name not in inputs:
                    raise InputError(f"TensorRT engine input '{name}' was not given")
                array = np.ascontiguousarray(inputs[name], dtype=self._dtypes[name])
                if not self._context.set_input_shape(name, tuple(array.shape)):
                    profile = self._engine.get_tensor_profile_shape(name, 0)
                    raise InputError(profile_message(name, tuple(array.shape), profile))
                self._context.set_tensor_address(name, self._cuda.to_device(name, array))
                held.append(array)
            results: dict[str, tuple[np.ndarray, int]] = {}
            for name in self._engine_outputs:
                shape = tuple(int(d) for d in self._context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise ArtifactError(
                        f"TensorRT output '{name}' has a data-dependent shape {list(shape)}, "
                        "which this executor does not support yet"
                    )
                out = np.empty(shape, dtype=self._dtypes[name])
                address = self._cuda.buffer(name, out.nbytes)
                self._context.set_tensor_address(name, address)
                results[name] = (out, address)
            if not self._context.execute_async_v3(self._cuda.handle):
                raise InputError("TensorRT failed to enqueue the engine (execute_async_v3)")
            for out, address in results.values():
                self._cuda.to_host(out, address)
            self._cuda.synchronize()
            del held
            return {name: results[name][0] for name in self._outputs}

    def close(self) -> None:
        """Release the context, the engine and the device buffers."""
        with self._lock:
            self._context = None
            self._engine = None
            self._cuda.close()

    def __del__(self) -> None:
        try:
            if getattr(self, "_engine", None) is not None:
                self.close()
        except Exception:
            pass  # interpreter shutdown: CUDA may already be gone

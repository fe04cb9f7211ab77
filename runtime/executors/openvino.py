"""Executor for OpenVINO IR payloads (``.xml`` + ``.bin``)."""

from __future__ import annotations

import queue
from pathlib import Path
from typing import Any

import numpy as np

from ai_vmm.runtime.errors import ArtifactError, DeviceError, InputError

# numpy has two 64-bit integer types on LP64 platforms: ``long`` ('l', what np.int64 is) and
# ``longlong`` ('q'). ONNX Runtime returns int64 tensors as ``longlong``; OpenVINO 2026.4's Python
# binding accepts only ``long`` ("Unsupported data type: int64"). A view fixes it without a copy.
_SAME_BITS = {
    char: np.dtype(kind)
    for char, kind in (("q", np.int64), ("Q", np.uint64))
    if np.dtype(kind).char != char
}


def _openvino_array(value: Any) -> Any:
    """``value`` with a dtype OpenVINO's binding accepts (a view where numpy has two spellings)."""
    if isinstance(value, np.ndarray) and value.dtype.char in _SAME_BITS:
        return value.view(_SAME_BITS[value.dtype.char])
    return value


def compile_properties(config: dict[str, Any]) -> dict[str, Any]:
    """OpenVINO ``compile_model`` properties from an artifact's partition config."""
    props: dict[str, Any] = {}
    if "performance_hint" in config:
        props["PERFORMANCE_HINT"] = config["performance_hint"]
    if "inference_precision" in config:
        props["INFERENCE_PRECISION_HINT"] = config["inference_precision"]
    if config.get("num_streams"):
        props["NUM_STREAMS"] = str(config["num_streams"])
    if config.get("inference_num_threads"):
        props["INFERENCE_NUM_THREADS"] = int(config["inference_num_threads"])
    return props


class OpenVinoExecutor:
    """Compiles an IR for its device once; each concurrent call takes its own infer request."""

    def __init__(
        self, entry: Path, device: str, config: dict[str, Any], outputs: tuple[str, ...]
    ) -> None:
        import openvino as ov

        core = ov.Core()
        base = device.split(".")[0]
        if device not in core.available_devices and base not in core.available_devices:
            raise DeviceError(
                f"OpenVINO device {device} is not present here "
                f"(available: {', '.join(core.available_devices)})"
            )
        try:
            model = core.read_model(str(entry))
            self._compiled = core.compile_model(model, device, compile_properties(config))
        except Exception as exc:
            raise ArtifactError(
                f"OpenVINO could not load {entry.name} for {device}: {exc}"
            ) from exc
        if outputs and len(outputs) != len(self._compiled.outputs):
            raise ArtifactError(
                f"{entry.name} has {len(self._compiled.outputs)} outputs, "
                f"the manifest {len(outputs)}"
            )
        self._outputs = list(outputs) or [p.get_any_name() for p in self._compiled.outputs]
        self._ports = {
            name: index
            for index, port in enumerate(self._compiled.inputs)
            for name in port.get_names()
        }
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._entry, self._device, self._config = entry, device, config

    def profile_ops(self, inputs: dict[str, Any], runs: int) -> list[dict[str, Any]]:
        """Per-op-type time (ms per inference) from OpenVINO's performance counters."""
        import openvino as ov

        core = ov.Core()
        props = {**compile_properties(self._config), "PERF_COUNT": True}
        compiled = core.compile_model(core.read_model(str(self._entry)), self._device, props)
        request = compiled.create_infer_request()
        totals: dict[str, float] = {}
        for _ in range(runs):
            request.infer(self._feed(inputs))
            for info in request.profiling_info:
                if str(info.status).endswith("EXECUTED"):
                    op = str(info.node_type)
                    totals[op] = totals.get(op, 0.0) + info.real_time.total_seconds() * 1000.0
        return [{"op": op, "ms": ms / runs} for op, ms in totals.items()]

    def _feed(self, inputs: dict[str, Any]) -> dict[Any, Any]:
        """Inputs keyed by port: by tensor name, else by position among the unnamed ports.

        OpenVINO's IR does not always keep an ONNX input's name: a Parameter that feeds a Result
        directly keeps only the output's name after ``save_model``/``read_model``, and the ONNX
        frontend turns zero-element and unused inputs into constants (no Parameter at all).
        ``inputs`` comes in the model's input order, which is also OpenVINO's Parameter order.
        """
        inputs = {name: _openvino_array(value) for name, value in inputs.items()}
        if self._ports.keys() >= inputs.keys():
            return inputs
        feed: dict[Any, Any] = {}
        unmatched: list[tuple[str, Any]] = []
        for name, value in inputs.items():
            if name in self._ports:
                feed[self._ports[name]] = value
            else:
                unmatched.append((name, value))
        free = [i for i in range(len(self._compiled.inputs)) if i not in feed]
        if len(unmatched) > len(free):
            # Zero-element inputs are the ones the frontend folds into constants.
            unmatched = [(n, v) for n, v in unmatched if np.size(v) != 0] if free else []
        if len(unmatched) != len(free):
            names = ", ".join(repr(name) for name, _ in unmatched)
            raise InputError(
                f"OpenVINO model has {len(self._compiled.inputs)} inputs; cannot place {names}"
            )
        feed.update((index, value) for index, (_, value) in zip(free, unmatched, strict=True))
        return feed

    @property
    def compiled_model(self) -> Any:
        """The underlying ``openvino.CompiledModel`` (for benchmarks and profiling)."""
        return self._compiled

    def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        try:
            request = self._requests.get_nowait()
        except queue.Empty:
            request = self._compiled.create_infer_request()
        try:
            request.infer(self._feed(inputs), share_inputs=True)
            return {
                name: np.array(request.get_output_tensor(i).data, copy=True)
                for i, name in enumerate(self._outputs)
            }
        except Exception as exc:
            raise InputError(f"OpenVINO failed to run: {exc}") from exc
        finally:
            self._requests.put(request)

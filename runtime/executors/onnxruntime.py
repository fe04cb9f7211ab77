"""Executor for ONNX Runtime payloads (an ONNX model, optimized offline for a provider)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ai_vmm.runtime.errors import ArtifactError, DeviceError, InputError

_PROVIDERS = {"CPU": "CPUExecutionProvider", "CUDA": "CUDAExecutionProvider"}

_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def session_options(config: dict[str, Any]) -> Any:
    """ONNX Runtime session options from an artifact's partition config."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Fatal only: a failed run raises InputError with ONNX Runtime's message, and its own log
    # line would print the same error a second time, unasked, on the user's terminal.
    options.log_severity_level = 4
    level = config.get("graph_optimization_level", "all")
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[level])
    if config.get("intra_op_num_threads"):
        options.intra_op_num_threads = int(config["intra_op_num_threads"])
    if config.get("force_spinning_stop", config.get("shares_cpu")):
        # The intra-op workers stop spinning as soon as a run returns (they spin again on the
        # next run) where partitions take turns on the CPU: ``executor_config`` in
        # ``ai_vmm.runtime.model`` says why. A config's own ``force_spinning_stop`` wins.
        options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


class OnnxRuntimeExecutor:
    """Runs an ONNX payload with an ``onnxruntime.InferenceSession`` (thread-safe ``run``)."""

    def __init__(
        self, entry: Path, device: str, config: dict[str, Any], outputs: tuple[str, ...]
    ) -> None:
        import onnxruntime as ort

        provider = _PROVIDERS.get(device, device)
        if provider not in ort.get_available_providers():
            raise DeviceError(
                f"ONNX Runtime provider {provider} is not available here "
                f"(available: {', '.join(ort.get_available_providers())})"
            )
        try:
            self._session = ort.InferenceSession(
                str(entry), sess_options=session_options(config), providers=[provider]
            )
        except Exception as exc:
            raise ArtifactError(f"ONNX Runtime could not load {entry.name}: {exc}") from exc
        self._outputs = list(outputs) or [o.name for o in self._session.get_outputs()]
        self._entry, self._config = entry, config
        # Per call, ``InferenceSession.run`` re-checks the feed's names, OrtValue ownership and
        # WebGPU graph capture in Python, and without run options the binding builds a default
        # ``RunOptions``: about 8 us here on top of the binding's own 9 us, paid once per
        # partition, so once more per partition boundary. The runtime has checked the inputs
        # already (names, dtypes, shapes), so on the CPU provider the executor calls the
        # session's binding directly, with one ``RunOptions`` that concurrent calls share (a
        # run only reads it). Other providers keep the public ``run`` and its fallback to the
        # CPU provider on an execution provider failure, as does an ONNX Runtime without the
        # binding attribute.
        self._run_options = ort.RunOptions()
        binding: Any = getattr(self._session, "_sess", None)
        self.direct_run = provider == "CPUExecutionProvider" and callable(
            getattr(binding, "run", None)
        )
        """Whether runs skip ``InferenceSession.run``'s per-call Python checks."""
        self._run = binding.run if self.direct_run else self._session.run

    def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        try:
            values = self._run(self._outputs, inputs, self._run_options)
        except Exception as exc:
            raise InputError(f"ONNX Runtime failed to run: {exc}") from exc
        return dict(zip(self._outputs, values, strict=True))

    def profile_ops(self, inputs: dict[str, Any], runs: int) -> list[dict[str, Any]]:
        """Per-op-type time (ms per inference) from ONNX Runtime's own profiler."""
        import json
        import tempfile

        import onnxruntime as ort

        with tempfile.TemporaryDirectory(prefix="ai-vmm-ortprof-") as tmp:
            options = session_options(self._config)
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(tmp) / "ort")
            session = ort.InferenceSession(
                str(self._entry), sess_options=options, providers=self._session.get_providers()
            )
            for _ in range(runs):
                session.run(self._outputs, inputs)
            events = json.loads(Path(session.end_profiling()).read_text())
        totals: dict[str, float] = {}
        for event in events:
            if event.get("cat") != "Node" or not str(event.get("name", "")).endswith(
                "_kernel_time"
            ):
                continue
            op = str(event.get("args", {}).get("op_name", "?"))
            totals[op] = totals.get(op, 0.0) + float(event.get("dur", 0)) / 1000.0
        return [{"op": op, "ms": ms / runs} for op, ms in totals.items()]

"""ONNX Runtime backend of the LM runtime: the KV cache stays in ONNX Runtime's buffers.

Each step binds the previous step's ``present.*`` outputs (``OrtValue``s ONNX Runtime allocated)
as this step's ``past.*`` inputs through I/O binding, so the cache never goes through numpy
between steps; only the logits are copied out. Rows leave the batch by a gather of the cache
(at most once per finished sequence).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ai_vmm.runtime.errors import ArtifactError, DeviceError, InputError
from ai_vmm.runtime.llm.session import check_step
from ai_vmm.runtime.llm.spec import LMSpec

_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


class OnnxRuntimeDecoder:
    """One ``InferenceSession`` of the decoder step; contexts share it."""

    target = "onnxruntime"

    def __init__(self, entry: Path, device: str, config: dict[str, Any], spec: LMSpec) -> None:
        import onnxruntime as ort

        if device != "CPU":
            raise DeviceError(f"the ONNX Runtime LM backend runs on CPU, not {device}")
        options = ort.SessionOptions()
        level = _LEVELS.get(str(config.get("graph_optimization_level", "all")), "ORT_ENABLE_ALL")
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        if config.get("intra_op_num_threads"):
            options.intra_op_num_threads = int(config["intra_op_num_threads"])
        try:
            self._session = ort.InferenceSession(
                str(entry), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ArtifactError(f"ONNX Runtime could not load {entry.name}: {exc}") from exc
        self._ort = ort
        self.device = device
        self.spec = spec
        self.past_names = spec.cache.input_names()
        self.present_names = spec.cache.output_names()
        self.dtype = np.dtype(spec.cache.dtype)

    def context(self) -> OnnxRuntimeContext:
        return OnnxRuntimeContext(self)

    def close(self) -> None:
        self._session = None

    def _run(self, binding: Any) -> None:
        if self._session is None:
            raise InputError("the model is closed")
        self._session.run_with_iobinding(binding)

    def _binding(self) -> Any:
        if self._session is None:
            raise InputError("the model is closed")
        return self._session.io_binding()


class OnnxRuntimeContext:
    """A KV cache held as ONNX Runtime ``OrtValue``s."""

    def __init__(self, decoder: OnnxRuntimeDecoder) -> None:
        self._decoder = decoder
        self._cache: list[Any] | None = None
        self._keepalive: list[np.ndarray] = []
        self._rows = 0
        self._length = 0

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def length(self) -> int:
        return self._length

    def forward(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        logit_index: np.ndarray,
    ) -> np.ndarray:
        decoder = self._decoder
        rows, seq = input_ids.shape
        if self._cache is None:
            empty = [np.zeros(s, decoder.dtype) for s in decoder.spec.cache.shapes(rows, 0)]
            self._set(empty)
        if rows != self._rows:
            raise InputError(f"step of {rows} rows on a cache of {self._rows} rows")
        check_step(attention_mask, rows, self._length, seq)
        binding = decoder._binding()
        feeds = {
            "input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
            "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64),
            "position_ids": np.ascontiguousarray(position_ids, dtype=np.int64),
            "logit_index": np.ascontiguousarray(logit_index, dtype=np.int64),
        }
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array)
        for name, value in zip(decoder.past_names, self._cache or [], strict=True):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        for name in decoder.present_names:
            binding.bind_output(name, "cpu")
        decoder._run(binding)
        outputs = binding.get_outputs()
        logits = outputs[0].numpy()
        self._cache = list(outputs[1:])
        self._keepalive = []
        self._length += seq
        return logits

    def keep(self, rows: Sequence[int]) -> None:
        if list(rows) == list(range(self._rows)):
            return
        index = np.asarray(rows, dtype=np.int64)
        self._set([np.ascontiguousarray(a[index]) for a in self.read_cache()])

    def read_cache(self) -> list[np.ndarray]:
        if self._cache is None:
            return [np.zeros(s, self._decoder.dtype) for s in self._decoder.spec.cache.shapes(0, 0)]
        return [value.numpy() for value in self._cache]

    def write_cache(self, arrays: list[np.ndarray]) -> None:
        self._set([np.ascontiguousarray(a, dtype=self._decoder.dtype) for a in arrays])

    def reset(self) -> None:
        self._cache = None
        self._keepalive = []
        self._rows = self._length = 0

    def _set(self, arrays: list[np.ndarray]) -> None:
        ort = self._decoder._ort
        # ortvalue_from_numpy shares the array's memory: keep the arrays alive with the values.
        self._keepalive = arrays
        self._cache = [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays]
        self._rows = int(arrays[0].shape[0])
        self._length = int(arrays[0].shape[2])

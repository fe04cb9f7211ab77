"""ONNX Runtime backend of the LM runtime: the KV cache lives in buffers we preallocate.

Every cache tensor has two flat buffers, sized for a capacity of tokens that grows by doubling
(in steps of ``_BLOCK`` tokens) and never per step. A step binds, through I/O binding, the
first ``rows * heads * length * dim`` elements of one buffer as its ``past.*`` input and the
first ``rows * heads * (length + seq) * dim`` of the other as its ``present.*`` output, so
ONNX Runtime writes the present straight into our memory; the next step swaps the two. The
exported graph's attention concatenates the past with the new tokens, so the past and the
present cannot share one buffer (that would need ONNX Runtime's ``GroupQueryAttention``
contrib op): each step still writes the whole present, but allocates no cache memory (only
its logits and small inputs are new). Rows leave the batch by a gather of the cache (at most
once per finished sequence).
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


_BLOCK = 256  # cache capacity grows in whole blocks of tokens, at least doubling
_ALIGN = 64  # bytes: the alignment ONNX Runtime's own CPU allocator gives


def _aligned(elements: int, dtype: np.dtype) -> np.ndarray:
    """A flat, uninitialised array of ``elements`` whose data starts on a 64-byte boundary."""
    raw = np.empty(elements * dtype.itemsize + _ALIGN, np.uint8)
    start = -raw.ctypes.data % _ALIGN
    return raw[start : start + elements * dtype.itemsize].view(dtype)


class OnnxRuntimeContext:
    """A KV cache in two sets of preallocated buffers: the past in one, the present in the other."""

    def __init__(self, decoder: OnnxRuntimeDecoder) -> None:
        self._decoder = decoder
        self._shapes = [(h, d) for _, h, _, d in decoder.spec.cache.shapes(0, 0)]
        self._buffers: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
        self._capacity = 0  # tokens per row each buffer holds
        self._slots = 0  # rows each buffer holds
        self._rows = 0
        self._length = 0

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def length(self) -> int:
        return self._length

    @property
    def capacity(self) -> int:
        """Tokens per row the preallocated buffers hold before they grow."""
        return self._capacity

    def forward(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        logit_index: np.ndarray,
    ) -> np.ndarray:
        decoder = self._decoder
        rows, seq = input_ids.shape
        if self._length == 0:  # an empty cache takes any batch
            self._rows = rows
        if rows != self._rows:
            raise InputError(f"step of {rows} rows on a cache of {self._rows} rows")
        check_step(attention_mask, rows, self._length, seq)
        self._reserve(self._length + seq)
        past, present = self._buffers
        binding = decoder._binding()
        feeds = {
            "input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
            "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64),
            "position_ids": np.ascontiguousarray(position_ids, dtype=np.int64),
            "logit_index": np.ascontiguousarray(logit_index, dtype=np.int64),
        }
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array)
        element = decoder.dtype.type
        for name, (heads, dim), flat in zip(decoder.past_names, self._shapes, past, strict=True):
            shape = (rows, heads, self._length, dim)
            binding.bind_input(name, "cpu", 0, element, shape, flat.ctypes.data)
        binding.bind_output("logits", "cpu")
        total = self._length + seq
        for name, (heads, dim), flat in zip(
            decoder.present_names, self._shapes, present, strict=True
        ):
            binding.bind_output(
                name, "cpu", 0, element, (rows, heads, total, dim), flat.ctypes.data
            )
        decoder._run(binding)
        logits: np.ndarray = binding.get_outputs()[0].numpy()
        self._buffers = (present, past)
        self._length = total
        return logits

    def keep(self, rows: Sequence[int]) -> None:
        if list(rows) == list(range(self._rows)):
            return
        index = np.asarray(rows, dtype=np.int64)
        self.write_cache([view[index] for view in self._views()])

    def read_cache(self) -> list[np.ndarray]:
        return [view.copy() for view in self._views()]

    def write_cache(self, arrays: list[np.ndarray]) -> None:
        rows, _, length, _ = arrays[0].shape
        if self._fits(rows, length):  # into the free set (``arrays`` may view the past's)
            buffers = (self._buffers[1], self._buffers[0])
        else:
            buffers = self._allocate(rows, self._round(length))
        for flat, array in zip(buffers[0], arrays, strict=True):
            flat[: array.size] = np.ascontiguousarray(array, dtype=self._decoder.dtype).ravel()
        self._buffers = buffers
        self._rows, self._length = int(rows), int(length)

    def reset(self) -> None:
        """Empty the cache; the buffers stay for a next batch of as many rows (a pooled
        context reuses them rather than allocating again)."""
        self._rows = self._length = 0

    def _views(self) -> list[np.ndarray]:
        """The cache as ``[rows, heads, length, dim]`` views of the past's buffers."""
        if not self._buffers[0]:
            return [np.zeros((0, h, 0, d), self._decoder.dtype) for h, d in self._shapes]
        return [
            flat[: self._rows * h * self._length * d].reshape(self._rows, h, self._length, d)
            for (h, d), flat in zip(self._shapes, self._buffers[0], strict=True)
        ]

    def _round(self, tokens: int) -> int:
        return max(_BLOCK, -(-tokens // _BLOCK) * _BLOCK)

    def _fits(self, rows: int, tokens: int) -> bool:
        return bool(self._buffers[0]) and rows <= self._slots and tokens <= self._capacity

    def _reserve(self, tokens: int) -> None:
        """Make the buffers hold ``tokens`` per row (at least doubling when they grow)."""
        if self._fits(self._rows, tokens):
            return
        old = self._views() if self._buffers[0] else []
        buffers = self._allocate(self._rows, self._round(max(tokens, 2 * self._capacity)))
        for flat, view in zip(buffers[0], old, strict=False):
            flat[: view.size] = view.ravel()
        self._buffers = buffers

    def _allocate(self, rows: int, capacity: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        dtype = self._decoder.dtype
        self._slots, self._capacity = rows, capacity
        return tuple(  # type: ignore[return-value]
            [_aligned(rows * h * capacity * d, dtype) for h, d in self._shapes] for _ in range(2)
        )

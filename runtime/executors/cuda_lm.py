"""cuda backend of the LM runtime: a static KV cache and CUDA-graph decode steps.

The decoder step (``targets/cuda_lm.py``) writes each new key/value into preallocated cache
tensors ``[capacity, heads, max_cache_len, head_dim]`` in place. A context keeps one such
buffer per key/value; its first ``rows`` rows are the batch (views of fixed addresses), so a
decode step of ``rows`` sequences has fixed shapes and addresses and is captured once as a CUDA
graph (the capture rules of ``runtime/executors/cuda.py``: private stream, one capture at a time,
cuBLAS workspaces cleared around it) and replayed after that. Prefill runs eagerly. Rows leave
by a gather inside the buffers; a larger batch reallocates them (and drops the graphs).

On the CPU (``device_type == "cpu"``, for tests) the same code runs without graphs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ai_vmm.runtime.errors import ArtifactError, DeviceError, InputError
from ai_vmm.runtime.llm.spec import LMSpec


class CudaDecoder:
    """The exported static-cache step on one device; contexts hold the caches."""

    target = "cuda"

    def __init__(self, entry: Path, device: str, config: dict[str, Any], spec: LMSpec) -> None:
        import torch

        from ai_vmm.runtime.executors.cuda import strict_fp32

        self._torch = torch
        device_type = str(config.get("device_type", "cuda"))
        if device_type == "cuda":
            if not torch.cuda.is_available():
                raise DeviceError("this LM artifact runs on an NVIDIA GPU and PyTorch sees none")
            index = int(device) if str(device).isdigit() else 0
            if index >= torch.cuda.device_count():
                raise DeviceError(f"the artifact needs cuda:{index}; this machine has fewer GPUs")
            self.torch_device = torch.device(f"cuda:{index}")
            if config.get("precision", "fp32") == "fp32":
                strict_fp32(torch)
        else:
            self.torch_device = torch.device("cpu")
        built = str(config.get("torch", ""))
        if built and built.split("+")[0] != torch.__version__.split("+")[0]:
            raise DeviceError(
                f"the decoder was exported with PyTorch {built}, this machine has "
                f"{torch.__version__}: recompile here"
            )
        self.module: Any = None
        try:
            self.module = torch.export.load(str(entry)).module()
        except Exception as exc:
            raise ArtifactError(f"cannot load the exported decoder {entry.name}: {exc}") from exc
        self.dtype = getattr(torch, str(config.get("dtype", "float32")))
        self.max_len = int(config.get("max_cache_len", 0))
        if self.max_len <= 0:
            raise ArtifactError("the cuda LM partition has no max_cache_len")
        self.graphs = bool(config.get("cuda_graphs")) and self.torch_device.type == "cuda"
        self.device = device
        self.spec = spec

    def context(self) -> CudaContext:
        return CudaContext(self)

    def close(self) -> None:
        self.module = None


class CudaContext:
    """One static cache (see the module doc)."""

    def __init__(self, decoder: CudaDecoder) -> None:
        self._decoder = decoder
        self._torch = decoder._torch
        self._buffers: list[Any] = []
        self._capacity = 0
        self._rows = 0
        self._length = 0
        self._graphs: dict[int, Any] = {}
        self._stream: Any = None

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
        torch, decoder = self._torch, self._decoder
        rows, seq = input_ids.shape
        if self._length == 0:
            self._rows = rows
        if rows != self._rows:
            raise InputError(f"step of {rows} rows on a cache of {self._rows} rows")
        total = self._length + seq
        if total > decoder.max_len:
            raise InputError(
                f"the static KV cache holds {decoder.max_len} tokens; this step needs {total}"
            )
        self._reserve(rows)
        device = decoder.torch_device
        mask = np.zeros((rows, decoder.max_len), dtype=np.int64)
        mask[:, :total] = attention_mask
        inputs = [
            torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64)).to(device),
            torch.from_numpy(mask).to(device),
            torch.from_numpy(np.ascontiguousarray(position_ids, dtype=np.int64)).to(device),
            torch.tensor(self._length, dtype=torch.int64, device=device),
            torch.from_numpy(np.ascontiguousarray(logit_index, dtype=np.int64)).to(device),
        ]
        with torch.inference_mode():
            if seq == 1 and decoder.graphs:
                logits = self._replay(rows, inputs)
            else:
                logits = decoder.module(*inputs, *self._views(rows))
            out = logits.float().cpu().numpy()
        self._length = total
        return out

    def keep(self, rows: Sequence[int]) -> None:
        torch = self._torch
        if list(rows) == list(range(self._rows)):
            return
        index = torch.tensor(list(rows), dtype=torch.int64, device=self._decoder.torch_device)
        with torch.inference_mode():
            for buffer in self._buffers:
                buffer[: len(rows)] = buffer.index_select(0, index)
        self._rows = len(rows)

    def read_cache(self) -> list[np.ndarray]:
        if not self._buffers:
            shapes = self._decoder.spec.cache.shapes(self._rows, 0)
            return [np.zeros(s, np.float32) for s in shapes]
        return [b[: self._rows, :, : self._length].float().cpu().numpy() for b in self._buffers]

    def write_cache(self, arrays: list[np.ndarray]) -> None:
        torch = self._torch
        rows, length = int(arrays[0].shape[0]), int(arrays[0].shape[2])
        if length > self._decoder.max_len:
            raise InputError(
                f"a cache of {length} tokens exceeds the static {self._decoder.max_len}"
            )
        self._reserve(rows)
        with torch.inference_mode():
            for buffer, array in zip(self._buffers, arrays, strict=True):
                buffer[:rows, :, :length] = torch.from_numpy(np.ascontiguousarray(array)).to(
                    buffer.device, buffer.dtype
                )
        self._rows, self._length = rows, length

    def reset(self) -> None:
        self._rows = self._length = 0

    # -- internals -----------------------------------------------------------------------

    def _views(self, rows: int) -> list[Any]:
        return [buffer[:rows] for buffer in self._buffers]

    def _reserve(self, rows: int) -> None:
        """Buffers for at least ``rows`` rows (doubling; existing rows are kept)."""
        if rows <= self._capacity:
            return
        torch, decoder = self._torch, self._decoder
        capacity = max(rows, 2 * self._capacity, 1)
        fresh = [
            torch.zeros(
                (capacity, h, decoder.max_len, d), dtype=decoder.dtype, device=decoder.torch_device
            )
            for h, d in zip(decoder.spec.cache.heads, decoder.spec.cache.head_dims, strict=True)
            for _ in range(2)
        ]
        for old, new in zip(self._buffers, fresh, strict=False):
            new[: self._capacity] = old
        self._buffers, self._capacity = fresh, capacity
        self._graphs.clear()  # they point at the old buffers

    def _replay(self, rows: int, inputs: list[Any]) -> Any:
        from ai_vmm.runtime.executors.cuda import capture, private_stream

        torch = self._torch
        graph = self._graphs.get(rows)
        if graph is None:
            if self._stream is None:
                self._stream = private_stream(torch, self._decoder.torch_device)
            views = self._views(rows)
            module = self._decoder.module

            def step(*small: Any) -> list[Any]:
                return [module(*small, *views)]

            try:
                graph = capture(step, inputs, self._decoder.torch_device, self._stream)
            except Exception:
                # Some step does a host sync (not capturable): run this batch size eagerly.
                self._graphs[rows] = False
                return self._decoder.module(*inputs, *self._views(rows))
            self._graphs[rows] = graph
            # A capture records without running: replay it below (writing this step's keys
            # and values again, as the warm-up runs inside ``capture`` did, is harmless).
        if graph is False:
            return self._decoder.module(*inputs, *self._views(rows))
        stream = self._stream
        stream.wait_stream(torch.cuda.current_stream(self._decoder.torch_device))
        with torch.cuda.stream(stream):
            for static, value in zip(graph.inputs, inputs, strict=True):
                static.copy_(value)
            graph.graph.replay()
            logits = graph.outputs[0].clone()
        torch.cuda.current_stream(self._decoder.torch_device).wait_stream(stream)
        return logits

"""cuda backend of the LM runtime: a static KV cache and CUDA-graph decode steps.

The decoder step (``targets/cuda_lm.py``) writes each new key/value into preallocated cache
tensors ``[capacity, heads, max_cache_len, head_dim]`` in place. A context keeps one such
buffer per key/value; its first ``rows`` rows are the batch (views of fixed addresses), so a
decode step of ``rows`` sequences has fixed shapes and addresses and is captured once as a CUDA
graph (the capture rules of ``runtime/executors/cuda.py``: private stream, one capture at a time,
cuBLAS workspaces cleared around it) and replayed after that. Prefill runs eagerly. Rows leave
by a gather inside the buffers; a larger batch reallocates them (and drops the graphs).

A step sees only a window of the buffers, their first ``window`` columns, the smallest power of
two from :data:`MIN_WINDOW` that holds the sequence (artifacts whose step takes one: config
``window``), so attention costs what the sequence needs, not what the cache could hold. Graphs
are kept per (rows, window). ``decode_compile: inductor`` runs decode steps through
``torch.compile`` (fused kernels) inside those graphs.

On the CPU (``device_type == "cpu"``, for tests) the same code runs without graphs.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ai_vmm.runtime.errors import ArtifactError, DeviceError, InputError
from ai_vmm.runtime.executors import cuda_workspaces
from ai_vmm.runtime.llm.session import check_step
from ai_vmm.runtime.llm.spec import LMSpec

MIN_WINDOW = 256
"""The smallest cache window a step attends to (windows double from here)."""


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
        # Steps attend over a window of the cache (the first columns, a power of two) where
        # the artifact's step takes one; older artifacts take the whole cache every step.
        self.windowed = bool(config.get("window"))
        # Decode steps through Inductor (fused kernels) before the CUDA-graph capture: the
        # artifact's choice, or AI_VMM_CUDA_LM_COMPILE=inductor|none for a comparison.
        self.decode_compile = os.environ.get(
            "AI_VMM_CUDA_LM_COMPILE", str(config.get("decode_compile") or "none")
        )
        if self.decode_compile not in ("none", "inductor"):
            raise ArtifactError(f"unknown decode_compile {self.decode_compile!r}")
        self.decode_module: Any = (
            _FusedSteps(torch.compile(self.module, dynamic=True), self.module)
            if self.decode_compile == "inductor"
            else self.module
        )
        self.device = device
        self.spec = spec

    def context(self) -> CudaContext:
        return CudaContext(self)

    def window(self, total: int) -> int:
        """Cache columns a step over ``total`` tokens attends to."""
        if not self.windowed:
            return self.max_len
        width = MIN_WINDOW
        while width < total:
            width *= 2
        return min(width, self.max_len)

    @property
    def decode_note(self) -> str | None:
        """Why decode steps run plain although the artifact asked for Inductor, if so."""
        return getattr(self.decode_module, "note", None)

    def close(self) -> None:
        self.module = self.decode_module = None


class _FusedSteps:
    """Inductor-compiled decode steps, compiled at the first step of each shape in this
    process; if compiling or running them fails here (no C compiler, a Triton or Inductor
    error), the plain steps from then on, with a warning and :attr:`note` saying why. A
    failed step is simply run again plain (it rewrites the same cache columns); if that fails
    too, the inputs were the problem: its error is raised and Inductor stays."""

    def __init__(self, compiled: Any, plain: Any) -> None:
        self._compiled: Any = compiled
        self._plain = plain
        self.note: str | None = None

    def __call__(self, *args: Any) -> Any:
        if self._compiled is not None:
            try:
                return self._compiled(*args)
            except Exception as exc:
                out = self._plain(*args)
                self._compiled = None
                self.note = (
                    "Inductor decode steps failed in this process "
                    f"({' '.join(str(exc).split())[:300] or type(exc).__name__}): plain steps"
                )
                warnings.warn(self.note, RuntimeWarning, stacklevel=2)
                return out
        return self._plain(*args)


class CudaContext:
    """One static cache (see the module doc)."""

    def __init__(self, decoder: CudaDecoder) -> None:
        self._decoder = decoder
        self._torch = decoder._torch
        self._buffers: list[Any] = []
        self._capacity = 0
        self._rows = 0
        self._length = 0
        self._graphs: dict[tuple[int, int], _StepGraph | None] = {}
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
        return self._step(input_ids, attention_mask, position_ids, logit_index, None)  # type: ignore[no-any-return]

    def forward_greedy(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        blocked: Sequence[np.ndarray],
    ) -> np.ndarray:
        """A decode step that returns each row's greedy token (int64 ``[rows]``), chosen on
        the device with the tokens ``blocked[row]`` excluded, instead of the logits: the
        vocabulary-wide logits never cross to the host (8 MB a step at batch 16 for a
        128k vocabulary) and no host argmax runs over them."""
        last = np.array([input_ids.shape[1] - 1], dtype=np.int64)
        return self._step(input_ids, attention_mask, position_ids, last, blocked)  # type: ignore[no-any-return]

    def _step(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        logit_index: np.ndarray,
        blocked: Sequence[np.ndarray] | None,
    ) -> np.ndarray:
        torch, decoder = self._torch, self._decoder
        rows, seq = input_ids.shape
        if self._length == 0:
            self._rows = rows
        if rows != self._rows:
            raise InputError(f"step of {rows} rows on a cache of {self._rows} rows")
        check_step(attention_mask, rows, self._length, seq)
        total = self._length + seq
        if total > decoder.max_len:
            raise InputError(
                f"the static KV cache holds {decoder.max_len} tokens; this step needs {total}"
            )
        self._reserve(rows)
        device = decoder.torch_device
        window = decoder.window(total)
        mask = np.zeros((rows, window), dtype=np.int64)
        mask[:, :total] = attention_mask
        host = [
            np.ascontiguousarray(input_ids, dtype=np.int64),
            mask,
            np.ascontiguousarray(position_ids, dtype=np.int64),
            np.array(self._length, dtype=np.int64),
            np.ascontiguousarray(logit_index, dtype=np.int64),
        ]
        with torch.inference_mode():
            graph = None
            if seq == 1 and decoder.graphs:
                graph = self._graph(rows, window, host)
            if graph is not None:
                out = self._replay(graph, host, blocked)
            else:
                inputs = [torch.from_numpy(a).to(device) for a in host]
                module = decoder.decode_module if seq == 1 else decoder.module
                with cuda_workspaces.shared():  # our capture's workspace clear waits for it
                    logits = module(*inputs, *self._views(rows, window)).float()
                if blocked is not None:
                    out = _greedy(torch, logits[:, -1], blocked).cpu().numpy()
                else:
                    out = logits.cpu().numpy()
        self._length = total
        return out

    def keep(self, rows: Sequence[int]) -> None:
        torch = self._torch
        if list(rows) == list(range(self._rows)):
            return
        index = torch.tensor(list(rows), dtype=torch.int64, device=self._decoder.torch_device)
        used = self._length  # columns past it hold nothing yet: not copied
        with torch.inference_mode():
            for buffer in self._buffers:
                buffer[: len(rows), :, :used] = buffer[:, :, :used].index_select(0, index)
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

    def _views(self, rows: int, window: int) -> list[Any]:
        return [buffer[:rows, :, :window] for buffer in self._buffers]

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

    def _graph(self, rows: int, window: int, host: list[np.ndarray]) -> _StepGraph | None:
        """The decode graph of this shape, captured on first use; None where a capture
        failed (some step does a host sync): that shape runs without one."""
        from ai_vmm.runtime.executors.cuda import capture, private_stream

        torch = self._torch
        key = (rows, window)
        if key not in self._graphs:
            if self._stream is None:
                self._stream = private_stream(torch, self._decoder.torch_device)
            module = self._decoder.decode_module
            views = self._views(rows, window)

            def step(*small: Any) -> list[Any]:
                return [module(*small, *views)]

            device = self._decoder.torch_device
            example = [torch.from_numpy(a).to(device) for a in host]
            before = self._decoder.decode_note
            try:
                captured = capture(step, example, device, self._stream)
            except Exception:
                captured = None
                if self._decoder.decode_note != before:  # Inductor gave up inside: again,
                    with contextlib.suppress(Exception):  # with the plain steps
                        captured = capture(step, example, device, self._stream)
            if captured is None:
                self._graphs[key] = None
            else:
                # A capture records without running; the warm-up runs inside ``capture``
                # wrote this step's keys and values, as the replay will again (harmless).
                self._graphs[key] = _StepGraph(torch, captured)
        return self._graphs[key]

    def _replay(
        self, graph: _StepGraph, host: list[np.ndarray], blocked: Sequence[np.ndarray] | None
    ) -> np.ndarray:
        """One replay: inputs staged through pinned memory, logits (or greedy tokens) back
        the same way (the array returned is valid until this context's next step)."""
        torch = self._torch
        device = self._decoder.torch_device
        stream = self._stream
        for staged, array in zip(graph.staging, host, strict=True):
            staged.numpy()[...] = array
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for static, staged in zip(graph.captured.inputs, graph.staging, strict=True):
                static.copy_(staged, non_blocking=True)
            graph.captured.graph.replay()
            if blocked is None:
                graph.logits.copy_(graph.captured.outputs[0], non_blocking=True)
            else:
                tokens = _greedy(torch, graph.captured.outputs[0][:, -1], blocked)
                graph.tokens.copy_(tokens, non_blocking=True)
        stream.synchronize()
        return (graph.logits if blocked is None else graph.tokens).numpy()  # type: ignore[no-any-return]


def _greedy(torch: Any, logits: Any, blocked: Sequence[np.ndarray]) -> Any:
    """Each row's argmax over ``logits`` ``[rows, vocab]`` (on their device), the tokens of
    ``blocked[row]`` excluded."""
    pairs = [(row, int(t)) for row, ids in enumerate(blocked) for t in ids]
    if pairs:
        index = torch.tensor(pairs, dtype=torch.int64).to(logits.device, non_blocking=True)
        logits = logits.clone()
        logits[index[:, 0], index[:, 1]] = -torch.inf
    return logits.argmax(dim=-1)


class _StepGraph:
    """A captured decode step with pinned host buffers for its inputs and its logits."""

    def __init__(self, torch: Any, captured: Any) -> None:
        self.captured = captured
        self.staging = [
            torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in captured.inputs
        ]
        out = captured.outputs[0]
        self.logits = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
        self.tokens = torch.empty(out.shape[0], dtype=torch.int64, pin_memory=True)

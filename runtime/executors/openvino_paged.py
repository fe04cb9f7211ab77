"""OpenVINO backend of the LM runtime with PagedAttention: the KV cache in blocks we own.

OpenVINO ships the rewrite GenAI's ``LLMPipeline`` runs (``paged_attention_transformation``,
SDPA -> ``PagedAttentionExtension``): the decoder then takes the new tokens of every sequence
flattened into one axis, each sequence's past length and block table, and one key and one value
tensor per layer, ``[blocks, kv_heads, block_size, head_dim]``, which the plugin writes in place.
Its CPU kernels skip what a causal mask hides in prefill and run grouped-query attention's
single-token step on their fast path, which the stateful model's fused attention does not
(docs/generate.md; ``python scripts/llm_lean_compare.py attention`` on a 2-core EPYC: INT8
SmolLM2's 400-token TTFT 128 ms paged against 202 stateful; float32 greedy tokens identical).

``PagedContext`` keeps the runtime's ``KvContext`` contract (a batch of rows, left-padded to one
length, masked): each row is a sequence with its own blocks, pad tokens are never computed nor
stored, leaving rows free their blocks (no copy), and ``write_cache`` (the scheduler's merge and
compaction) is applied at the next step, where the mask says which columns are real.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ai_vmm.runtime.errors import ArtifactError, InputError
from ai_vmm.runtime.llm.session import check_step

PAGED_INPUTS = (
    "input_ids",
    "position_ids",
    "logit_index",
    "max_context_len",
    "past_lens",
    "subsequence_begins",
    "block_indices_begins",
    "block_indices",
)
MIN_BLOCKS = 16


def paged_model(model: Any, layers: int) -> Any:
    """Rewrite our stateful decoder (in place) for PagedAttention; return it.

    Raises:
        ArtifactError: the rewrite did not give one paged attention per layer, or the logits
            head is not the one our export writes.
    """
    from openvino._offline_transformations import paged_attention_transformation

    paged_attention_transformation(model)
    count = sum(op.get_type_name() == "PagedAttentionExtension" for op in model.get_ops())
    if count != layers:
        raise ArtifactError(f"PagedAttention rewrote {count} attention layers of {layers}")
    # The head gathers the rows ``logit_index`` names along the sequence axis, through a
    # [batch, seq] -> [seq, batch] transpose. Paged, tokens lie along the batch axis
    # ([tokens, 1, hidden]): gather there instead (the transpose after it puts them back).
    (index,) = [p for p in model.get_parameters() if p.get_friendly_name() == "logit_index"]
    gathers = [
        target.get_node()
        for first in index.output(0).get_target_inputs()
        for target in first.get_node().output(0).get_target_inputs()
    ]
    if len(gathers) != 1 or gathers[0].get_type_name() != "GatherND":
        raise ArtifactError("the decoder's logits head is not Unsqueeze -> GatherND")
    transpose = gathers[0].input(0).get_source_output().get_node()
    if transpose.get_type_name() != "Transpose":
        raise ArtifactError("the decoder's logits head gathers from no transpose")
    gathers[0].input(0).replace_source_output(transpose.input(0).get_source_output())
    model.validate_nodes_and_infer_types()
    return model


class PagedContext:
    """One infer request and the block pool of its rows."""

    def __init__(self, decoder: Any, request: Any, caches: list[tuple[str, Any, list[int]]]):
        self._decoder = decoder
        self._request = request
        self._caches = caches  # (input name, element type, [kv_heads, block, dim]) in cache order
        self._block = int(caches[0][2][1])
        # OpenVINO's Python shows a bf16 tensor as float16 numbers: view its bits as bf16
        self._bf16 = [kind.get_type_name() == "bf16" for _, kind, _ in caches]
        self._pool: list[Any] = []
        self._capacity = 0
        self._free: list[int] = []
        self._tables: list[list[int]] = []
        self._lens: list[int] = []
        self._length = 0
        self._pending: list[np.ndarray] | None = None
        self._inputs: dict[str, np.ndarray] = {}
        self._input_tensors: dict[str, Any] = {}

    @property
    def rows(self) -> int:
        return len(self._lens) if self._pending is None else int(self._pending[0].shape[0])

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
        rows, seq = input_ids.shape
        check_step(attention_mask, rows, self._length, seq)
        if self._length and rows != self.rows:
            raise InputError(f"step of {rows} rows on a cache of {self.rows} rows")
        if self._pending is not None:
            self._materialize(attention_mask[:, : self._length])
        if not self._length:
            self._tables, self._lens = [[] for _ in range(rows)], [0] * rows
        new = attention_mask[:, self._length :].astype(bool)
        counts = new.sum(axis=1)
        active = [r for r in range(rows) if counts[r]]
        for r in active:
            self._reserve(r, self._lens[r] + int(counts[r]))
        picks = np.asarray(logit_index, dtype=np.int64)
        tables = [self._tables[r] for r in active]
        feed = (
            {
                "max_context_len": np.array(
                    max(self._lens[r] + counts[r] for r in active), np.int32
                ),
                "past_lens": np.array([self._lens[r] for r in active], np.int32),
                "block_indices_begins": np.cumsum([0, *map(len, tables)], dtype=np.int32),
                "block_indices": np.concatenate(tables, dtype=np.int32),
            }
            if active
            else {}
        )
        if seq == 1 and len(active) == rows:  # a decode step: one token a row
            feed.update(
                input_ids=np.ascontiguousarray(input_ids[:, 0], dtype=np.int64),
                position_ids=np.ascontiguousarray(position_ids[:, 0], dtype=np.int64),
                logit_index=np.repeat(np.arange(rows, dtype=np.int64), len(picks)),
                subsequence_begins=np.arange(rows + 1, dtype=np.int32),
            )
        elif active:
            begins = np.cumsum([0, *(counts[r] for r in active)], dtype=np.int32)
            flat = []
            for i, r in enumerate(active):  # each asked position's token (a pad: the one before)
                real = np.cumsum(new[r]) - 1
                flat.append(begins[i] + np.clip(real[picks], 0, counts[r] - 1))
            feed.update(
                input_ids=np.concatenate([input_ids[r][new[r]] for r in active], dtype=np.int64),
                position_ids=np.concatenate(
                    [position_ids[r][new[r]] for r in active], dtype=np.int64
                ),
                logit_index=np.concatenate(flat, dtype=np.int64),
                subsequence_begins=begins,
            )
        if active:
            try:
                self._set_inputs(feed)
                self._request.infer()
            except Exception as exc:
                raise InputError(f"OpenVINO failed to run the decoder step: {exc}") from exc
            logits = self._request.get_output_tensor(0).data.reshape(len(active), len(picks), -1)
        if len(active) == rows:
            out = np.array(logits, copy=True)
        else:  # rows without a new token get zeros
            out = np.zeros((rows, len(picks), self._decoder.spec.vocab_size), np.float32)
            if active:
                out[active] = logits
        for r in active:
            self._lens[r] += int(counts[r])
        self._length += seq
        return out

    def keep(self, rows: Sequence[int]) -> None:
        if self._pending is not None:
            index = np.asarray(rows, dtype=np.int64)
            self._pending = [np.ascontiguousarray(a[index]) for a in self._pending]
            return
        kept = set(rows)
        for r in range(len(self._lens)):
            if r not in kept:
                self._free.extend(self._tables[r])
        tables, lens, seen = [], [], set()
        for r in rows:
            table = self._tables[r]
            if r in seen:  # a row kept twice: its own copy of the blocks
                table = self._copy_blocks(table)
            seen.add(r)
            tables.append(table)
            lens.append(self._lens[r])
        self._tables, self._lens = tables, lens

    def read_cache(self) -> list[np.ndarray]:
        if self._pending is not None:
            return [a.copy() for a in self._pending]
        arrays = []
        for i, (_, _, (heads, _, dim)) in enumerate(self._caches):
            out = np.zeros((len(self._lens), heads, self._length, dim), np.float32)
            for r, (table, n) in enumerate(zip(self._tables, self._lens, strict=True)):
                if n:
                    blocks = self._raw(i)[table].astype(np.float32)  # [b, h, block, d]
                    tokens = blocks.transpose(1, 0, 2, 3).reshape(heads, -1, dim)[:, :n]
                    out[r, :, self._length - n :] = tokens
            arrays.append(out)
        return arrays

    def write_cache(self, arrays: list[np.ndarray]) -> None:
        if len(arrays) != len(self._caches):
            raise InputError(f"{len(arrays)} cache arrays for {len(self._caches)} cache inputs")
        self._release_all()
        self._pending = [np.array(a, dtype=np.float32, copy=True) for a in arrays]
        self._length = int(arrays[0].shape[2])

    def reset(self) -> None:
        self._release_all()
        self._pending = None
        self._length = 0

    def _set_inputs(self, feed: dict[str, np.ndarray]) -> None:
        """Write the step's inputs into tensors the request keeps (a new tensor only where a
        shape changed): the Python dispatch of eight fresh arrays a step cost ~0.2 ms, 2-3 %
        of an INT8 SmolLM2 step."""
        import openvino as ov

        for name, array in feed.items():
            view = self._inputs.get(name)  # the numpy view of the tensor the request holds
            if view is None or view.shape != array.shape:
                kind = ov.Type.i64 if array.dtype == np.int64 else ov.Type.i32
                tensor = ov.Tensor(kind, list(array.shape))
                self._request.set_tensor(name, tensor)
                self._input_tensors[name] = tensor  # owns the memory the view writes
                self._inputs[name] = view = tensor.data
            view[...] = array

    # -- blocks ---------------------------------------------------------------------------

    def _materialize(self, mask: np.ndarray) -> None:
        """Put the written cache into blocks: of each row, the columns its mask marks real."""
        pending, self._pending = self._pending, None
        assert pending is not None
        rows = int(pending[0].shape[0])
        self._tables, self._lens = [[] for _ in range(rows)], [0] * rows
        real = mask.astype(bool)
        for r in range(rows):
            n = int(real[r].sum())
            self._reserve(r, n)
            self._lens[r] = n
        for i, array in enumerate(pending):
            data = self._raw(i)
            for r in range(rows):
                self._store(data, self._tables[r], array[r][:, real[r]])

    def _raw(self, index: int) -> np.ndarray:
        """Pool ``index`` as numbers of its own type (a bf16 pool through ml_dtypes, which
        rounds float32 to nearest even on assignment)."""
        data: np.ndarray = self._pool[index].data
        if self._bf16[index]:
            import ml_dtypes  # onnx's dependency, so always here

            return data.view(ml_dtypes.bfloat16)
        return data

    def _store(self, data: np.ndarray, table: list[int], tokens: np.ndarray) -> None:
        """``tokens`` ``[heads, n, dim]`` into the first ``n`` slots of ``table``'s blocks."""
        for i, block in enumerate(table):
            part = tokens[:, i * self._block : (i + 1) * self._block]
            if part.shape[1] == 0:
                break
            data[block, :, : part.shape[1]] = part

    def _reserve(self, row: int, tokens: int) -> None:
        need = -(-tokens // self._block) - len(self._tables[row])
        if need <= 0:
            return
        if len(self._free) < need:
            self._grow(self._capacity + need - len(self._free))
        self._tables[row].extend(self._free[:need])
        del self._free[:need]

    def _grow(self, at_least: int) -> None:
        """A larger pool (at least doubled), the old blocks copied into it."""
        import openvino as ov

        capacity = max(MIN_BLOCKS, 2 * self._capacity, at_least)
        pools = []
        for i, (name, kind, tail) in enumerate(self._caches):
            pool = ov.Tensor(kind, [capacity, *tail])
            if self._pool:  # as bytes: a bf16 pool's numbers are not float16 ones
                pool.data.view(np.uint8)[: self._capacity] = self._raw(i).view(np.uint8)
            self._request.set_tensor(name, pool)
            pools.append(pool)
        self._free.extend(range(self._capacity, capacity))
        self._pool, self._capacity = pools, capacity

    def _copy_blocks(self, table: list[int]) -> list[int]:
        if len(self._free) < len(table):
            self._grow(self._capacity + len(table) - len(self._free))
        copy, self._free = self._free[: len(table)], self._free[len(table) :]
        for i in range(len(self._pool)):
            raw = self._raw(i)
            raw[copy] = raw[table]
        return copy

    def _release_all(self) -> None:
        self._free = list(range(self._capacity))
        self._tables, self._lens = [], []

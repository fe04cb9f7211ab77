"""OpenVINO backend of the LM runtime: the decoder stateful (the KV cache is the model's state)
or, where the artifact's config says ``attention: paged``, rewritten for PagedAttention
(``openvino_paged.py``: the cache in blocks the runtime owns).

The compiler made the past/present pairs into OpenVINO variables and put a ``Gather`` by
``beam_idx`` in front of each (as optimum-intel does), so OpenVINO's CPU plugin fuses
``ReadValue -> Gather -> Concat -> ScaledDotProductAttention -> Assign`` into one attention node
that owns the cache. Rows leave the batch through ``beam_idx`` on the next step (no copy);
joining rows go through the state API (``query_state``), which is a copy.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ai_vmm.runtime.errors import ArtifactError, DeviceError, InputError
from ai_vmm.runtime.executors.openvino_paged import PAGED_INPUTS, PagedContext, paged_model
from ai_vmm.runtime.llm.session import check_step
from ai_vmm.runtime.llm.spec import LMSpec

_STATE = re.compile(r"^past\.(\d+)\.(key|value)")
STATEFUL_INPUTS = {"input_ids", "attention_mask", "position_ids", "logit_index", "beam_idx"}


READ_PROPERTIES = {"ENABLE_MMAP": False}
"""The decoder's weights are read into memory, not mapped from the file: decoding SmolLM2 in
float32 (memory-bound: every weight is read once a token) ran at 48.3 tok/s from the mapped
file and 52.9 tok/s from memory (interleaved, quiet machine), where GenAI's export ran 53.7;
with INT8 weights, which the plugin unpacks anyway, it made no difference."""


def compile_properties(config: dict[str, Any]) -> dict[str, Any]:
    """``compile_model`` properties of an LM partition's config.

    The KV cache stays in float32 unless the artifact says otherwise: OpenVINO's CPU default
    (u8) made SmolLM2's greedy reply drift from the float model after ~100 tokens.
    """
    props: dict[str, Any] = {
        "PERFORMANCE_HINT": str(config.get("performance_hint", "LATENCY")),
        "KV_CACHE_PRECISION": str(config.get("kv_cache_precision", "f32")),
        "INFERENCE_PRECISION_HINT": str(config.get("inference_precision", "f32")),
    }
    if config.get("num_streams"):
        props["NUM_STREAMS"] = str(config["num_streams"])
    if config.get("inference_num_threads"):
        props["INFERENCE_NUM_THREADS"] = int(config["inference_num_threads"])
    if config.get("dynamic_quantization_group_size") is not None:
        props["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = int(config["dynamic_quantization_group_size"])
    return props


class OpenVinoDecoder:
    """The compiled decoder, stateful or paged (``attention``; ``attention_note`` says why a
    paged config loaded stateful); each context is an infer request with its own cache."""

    target = "openvino"

    def __init__(self, entry: Path, device: str, config: dict[str, Any], spec: LMSpec) -> None:
        import openvino as ov

        core = ov.Core()
        if device not in core.available_devices and device.split(".")[0] not in (
            core.available_devices
        ):
            raise DeviceError(
                f"OpenVINO device {device} is not present here "
                f"(available: {', '.join(core.available_devices)})"
            )
        self.attention = str(config.get("attention", "stateful"))
        self.attention_note: str | None = None
        self._ov = ov
        self.device = device
        self.spec = spec
        self._caches: list[tuple[str, Any, list[int]]] = []
        if self.attention == "paged":
            try:
                self._compiled = self._compile(core, entry, config, paged=True)
                self._caches = self._paged_caches()
            except ArtifactError as exc:  # another OpenVINO, another graph: stateful
                self.attention = "stateful"
                self.attention_note = f"PagedAttention unavailable ({exc}): stateful attention"
        if self.attention == "stateful":
            self._compiled = self._compile(core, entry, config, paged=False)
        names = {name for port in self._compiled.inputs for name in port.get_names()}
        wanted = set(PAGED_INPUTS) if self.attention == "paged" else STATEFUL_INPUTS
        if missing := wanted - names:
            raise ArtifactError(
                f"{entry.name} is not a {self.attention} decoder: no {sorted(missing)}"
            )

    def _compile(self, core: Any, entry: Path, config: dict[str, Any], paged: bool) -> Any:
        try:
            model = core.read_model(str(entry), config=READ_PROPERTIES)
        except Exception as exc:
            raise ArtifactError(f"OpenVINO could not read {entry.name}: {exc}") from exc
        if paged:
            try:
                model = paged_model(model, self.spec.cache.layers)
            except ArtifactError:
                raise
            except Exception as exc:
                raise ArtifactError(f"the PagedAttention rewrite failed: {exc}") from exc
        try:
            return core.compile_model(model, self.device, compile_properties(config))
        except Exception as exc:
            raise ArtifactError(
                f"OpenVINO could not load {entry.name} for {self.device}: {exc}"
            ) from exc

    def _paged_caches(self) -> list[tuple[str, Any, list[int]]]:
        """The paged cache inputs in cache order (key, value of each layer): name, element type,
        ``[kv_heads, block_size, head_dim]`` as the plugin laid them out."""
        caches = []
        for layer in range(self.spec.cache.layers):
            for kind in ("key", "value"):
                port = self._compiled.input(f"{kind}_cache.{layer}")
                shape = port.get_partial_shape()
                if shape.rank.get_length() != 4 or not all(d.is_static for d in list(shape)[1:]):
                    raise ArtifactError(f"{kind}_cache.{layer} has the layout {shape}")
                if port.get_element_type().get_type_name() not in ("f32", "bf16", "f16"):
                    raise ArtifactError(
                        f"paged attention runs with a float KV cache here, not "
                        f"{port.get_element_type()}"
                    )
                caches.append(
                    (
                        port.get_any_name(),
                        port.get_element_type(),
                        [d.get_length() for d in list(shape)[1:]],
                    )
                )
        return caches

    def context(self) -> OpenVinoContext | PagedContext:
        request = self._compiled.create_infer_request()
        if self.attention == "paged":
            return PagedContext(self, request, self._caches)
        return OpenVinoContext(self, request)

    def close(self) -> None:
        self._compiled = None

    @property
    def compiled_model(self) -> Any:
        return self._compiled


class OpenVinoContext:
    """One infer request: its variables hold the KV cache of its rows."""

    def __init__(self, decoder: OpenVinoDecoder, request: Any) -> None:
        self._decoder = decoder
        self._request = request
        self._order: np.ndarray | None = None
        self._rows = 0
        self._length = 0
        self._states: list[Any] | None = None

    @property
    def rows(self) -> int:
        return self._rows if self._order is None else len(self._order)

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
        if self._length == 0:
            beam = np.arange(rows, dtype=np.int32)
        else:
            beam = np.arange(self._rows, dtype=np.int32) if self._order is None else self._order
            if len(beam) != rows:
                raise InputError(f"step of {rows} rows on a cache of {len(beam)} rows")
        check_step(attention_mask, rows, self._length, seq)
        try:
            self._request.infer(
                {
                    "input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
                    "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64),
                    "position_ids": np.ascontiguousarray(position_ids, dtype=np.int64),
                    "logit_index": np.ascontiguousarray(logit_index, dtype=np.int64),
                    "beam_idx": beam,
                },
                share_inputs=True,
            )
        except Exception as exc:
            raise InputError(f"OpenVINO failed to run the decoder step: {exc}") from exc
        self._order = None
        self._rows = rows
        self._length += seq
        return np.array(self._request.get_output_tensor(0).data, copy=True)

    def keep(self, rows: Sequence[int]) -> None:
        index = np.asarray(rows, dtype=np.int32)
        self._order = index if self._order is None else self._order[index]

    def read_cache(self) -> list[np.ndarray]:
        if self._length == 0:
            shapes = self._decoder.spec.cache.shapes(self.rows, 0)
            return [np.zeros(s, np.dtype(self._decoder.spec.cache.dtype)) for s in shapes]
        arrays = [np.array(state.state.data, copy=True) for state in self._ordered_states()]
        if self._order is not None:
            arrays = [a[self._order] for a in arrays]
        return arrays

    def write_cache(self, arrays: list[np.ndarray]) -> None:
        ov = self._decoder._ov
        for state, array in zip(self._ordered_states(), arrays, strict=True):
            state.state = ov.Tensor(np.ascontiguousarray(array, dtype=np.float32))
        self._order = None
        self._rows = int(arrays[0].shape[0])
        self._length = int(arrays[0].shape[2])

    def reset(self) -> None:
        self._request.reset_state()
        self._order = None
        self._rows = self._length = 0

    def _ordered_states(self) -> list[Any]:
        """The request's variables in cache order (key, value of each layer)."""
        if self._states is None:
            found: dict[tuple[int, int], Any] = {}
            for state in self._request.query_state():
                match = _STATE.match(state.name)
                if match is None:
                    raise ArtifactError(f"unexpected OpenVINO variable {state.name!r}")
                found[(int(match.group(1)), 0 if match.group(2) == "key" else 1)] = state
            layers = self._decoder.spec.cache.layers
            if sorted(found) != [(i, kv) for i in range(layers) for kv in (0, 1)]:
                raise ArtifactError(
                    f"the decoder has {len(found)} cache variables, the manifest {2 * layers}"
                )
            self._states = [found[key] for key in sorted(found)]
        return self._states

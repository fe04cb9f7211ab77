"""The decoder as the token loop sees it, the same for every backend.

A ``DecoderSession`` is one compiled decoder step; each ``KvContext`` it hands out holds one KV
cache (a batch of sequences, left-padded to one length) and runs steps on it. The backends live
beside the other executors (``runtime/executors/<backend>_lm.py``) and are imported only when an
artifact needs them.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ai_vmm.runtime.errors import ArtifactError, DeviceError, InputError
from ai_vmm.runtime.llm.spec import LMSpec

_BACKENDS = {
    "openvino": "ai_vmm.runtime.executors.openvino_lm:OpenVinoDecoder",
    "onnxruntime": "ai_vmm.runtime.executors.onnxruntime_lm:OnnxRuntimeDecoder",
    "cuda": "ai_vmm.runtime.executors.cuda_lm:CudaDecoder",
}
_SDK = {"openvino": "openvino", "onnxruntime": "onnxruntime", "cuda": "torch"}


def check_step(attention_mask: np.ndarray, rows: int, length: int, seq: int) -> None:
    """A step's mask must cover the cache and the new tokens of every row.

    Raises:
        InputError: it does not.
    """
    if attention_mask.shape != (rows, length + seq):
        raise InputError(
            f"attention mask {list(attention_mask.shape)} does not fit {rows} rows x "
            f"({length} cached + {seq} new) tokens"
        )


class KvContext(Protocol):
    """One KV cache and the steps that extend it.

    Rows are sequences; every row has ``length`` cache columns (left padding where a sequence
    is shorter, masked out by ``attention_mask``).
    """

    @property
    def rows(self) -> int: ...

    @property
    def length(self) -> int: ...

    def forward(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        logit_index: np.ndarray,
    ) -> np.ndarray:
        """Run ``input_ids`` ``[rows, seq]`` on the cache and append them to it.

        ``attention_mask`` is ``[rows, length + seq]``; returns float32 logits
        ``[rows, len(logit_index), vocab]`` of the positions ``logit_index`` (0..seq-1).
        """
        ...

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only these rows, in this order (finished sequences leave the batch)."""
        ...

    def read_cache(self) -> list[np.ndarray]:
        """A copy of the cache: key and value of each layer, ``[rows, heads, length, dim]``."""
        ...

    def write_cache(self, arrays: list[np.ndarray]) -> None:
        """Replace the cache (same layout as ``read_cache``)."""
        ...

    def reset(self) -> None:
        """Empty the cache (no rows)."""
        ...


class DecoderSession(Protocol):
    """A compiled decoder step on one device."""

    target: str
    device: str

    def context(self) -> KvContext: ...

    def close(self) -> None: ...


def open_session(root: Path, spec: LMSpec) -> DecoderSession:
    """Open the decoder partition of an artifact with its backend.

    Raises:
        ArtifactError: the backend is unknown to this runtime.
        DeviceError: its package is not installed, or its device is not here.
    """
    part = spec.partition
    target = _BACKENDS.get(part.target)
    if target is None:
        raise ArtifactError(
            f"causal-lm artifact needs target '{part.target}', which this runtime cannot run "
            f"LMs on (known: {', '.join(sorted(_BACKENDS))})"
        )
    module_name, class_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        sdk = _SDK[part.target]
        if not (exc.name or "").startswith(sdk):  # our own module broke: say so, not "install"
            raise
        raise DeviceError(
            f"artifact needs the {part.target} runtime, which is not installed here "
            f"(pip install {sdk}): {exc}"
        ) from exc
    factory: Any = getattr(module, class_name)
    session: DecoderSession = factory(root / part.entry, part.device, part.config, spec)
    return session

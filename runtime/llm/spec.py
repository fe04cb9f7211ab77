"""The ``llm`` section of a ``causal-lm`` manifest: what the LM runtime needs, validated.

Written by the compiler (``ai_vmm.llm_compile``), read here; this module owns its schema::

    {"schema": 1,
     "architecture": "LlamaForCausalLM",
     "vocab_size": 49152, "context_length": 8192,
     "cache": {"heads": [3, ...], "head_dims": [64, ...], "dtype": "float32"},
     "decoder": {"partition": "p0", "kind": "stateful" | "explicit" | "static"},
     "tokenizer": {"file": "tokenizer/tokenizer.json",
                   "chat_template": "tokenizer/chat_template.jinja" | null,
                   "special_tokens": {"bos_token": "...", "eos_token": "...", ...},
                   "bos_token_id": 1, "eos_token_ids": [2], "pad_token_id": 2}}

``stateful``: the KV cache is the model's internal state (OpenVINO); ``explicit``: past/present
tensors the runtime binds (ONNX Runtime); ``static``: a preallocated cache the graph writes in
place (cuda).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ai_vmm.runtime.artifact import Manifest, PartitionSpec
from ai_vmm.runtime.errors import ArtifactError

SCHEMA_VERSION = 1
DECODER_KINDS = ("stateful", "explicit", "static")


@dataclass(frozen=True)
class CacheSpec:
    """The KV cache: per layer ``[batch, heads[i], length, head_dims[i]]`` of ``dtype``."""

    heads: tuple[int, ...]
    head_dims: tuple[int, ...]
    dtype: str

    @property
    def layers(self) -> int:
        return len(self.heads)

    def input_names(self) -> list[str]:
        return [f"past.{i}.{kv}" for i in range(self.layers) for kv in ("key", "value")]

    def output_names(self) -> list[str]:
        return [f"present.{i}.{kv}" for i in range(self.layers) for kv in ("key", "value")]

    def shapes(self, batch: int, length: int) -> list[tuple[int, int, int, int]]:
        """The shape of every cache tensor (key, value per layer) for ``batch`` x ``length``."""
        return [
            (batch, h, length, d)
            for h, d in zip(self.heads, self.head_dims, strict=True)
            for _ in range(2)
        ]


@dataclass(frozen=True)
class TokenizerSpec:
    file: str
    chat_template: str | None
    special_tokens: dict[str, str]
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    pad_token_id: int


@dataclass(frozen=True)
class LMSpec:
    """What ``ai_vmm.runtime.llm`` reads from a ``causal-lm`` manifest."""

    architecture: str
    vocab_size: int
    context_length: int
    cache: CacheSpec
    decoder_kind: str
    partition: PartitionSpec
    tokenizer: TokenizerSpec

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> LMSpec:
        """Validate ``manifest.llm``.

        Raises:
            ArtifactError: a field is missing, of the wrong type or inconsistent.
        """
        data = manifest.llm
        version = data.get("schema")
        if version != SCHEMA_VERSION:
            raise ArtifactError(
                f"causal-lm manifest has llm schema {version!r}; this runtime reads "
                f"{SCHEMA_VERSION}: recompile the model or upgrade ai-vmm"
            )
        try:
            cache = data["cache"]
            heads = tuple(_positive(h, "cache.heads") for h in cache["heads"])
            dims = tuple(_positive(d, "cache.head_dims") for d in cache["head_dims"])
            decoder = data["decoder"]
            tok = data["tokenizer"]
            eos = tuple(_int(t, "tokenizer.eos_token_ids") for t in tok["eos_token_ids"])
            spec_tokenizer = TokenizerSpec(
                file=str(tok["file"]),
                chat_template=None
                if tok.get("chat_template") is None
                else str(tok["chat_template"]),
                special_tokens={
                    str(k): str(v) for k, v in dict(tok.get("special_tokens", {})).items()
                },
                bos_token_id=None
                if tok.get("bos_token_id") is None
                else _int(tok["bos_token_id"], "bos"),
                eos_token_ids=eos,
                pad_token_id=_int(tok.get("pad_token_id", 0), "tokenizer.pad_token_id"),
            )
            kind = str(decoder["kind"])
            partition_id = str(decoder["partition"])
            spec = cls(
                architecture=str(data.get("architecture", "")),
                vocab_size=_positive(data["vocab_size"], "vocab_size"),
                context_length=_positive(data["context_length"], "context_length"),
                cache=CacheSpec(heads, dims, str(cache.get("dtype", "float32"))),
                decoder_kind=kind,
                partition=_partition(manifest, partition_id),
                tokenizer=spec_tokenizer,
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ArtifactError(f"causal-lm manifest: missing or bad llm field {exc}") from exc
        if len(heads) != len(dims) or not heads:
            raise ArtifactError("causal-lm manifest: cache.heads and cache.head_dims disagree")
        if kind not in DECODER_KINDS:
            raise ArtifactError(
                f"causal-lm manifest: decoder kind '{kind}' is unknown (known: "
                f"{', '.join(DECODER_KINDS)}); upgrade ai-vmm"
            )
        for rel in (spec.tokenizer.file, spec.tokenizer.chat_template):
            if rel is not None and rel not in manifest.assets:
                raise ArtifactError(
                    f"causal-lm manifest: tokenizer file {rel!r} is not a hashed asset"
                )
        return spec


def to_json(
    *,
    architecture: str,
    vocab_size: int,
    context_length: int,
    cache: dict[str, Any],
    decoder_kind: str,
    partition: str,
    tokenizer: dict[str, Any],
) -> dict[str, Any]:
    """The ``llm`` section as the compiler writes it (the inverse of ``LMSpec.from_manifest``)."""
    return {
        "schema": SCHEMA_VERSION,
        "architecture": architecture,
        "vocab_size": vocab_size,
        "context_length": context_length,
        "cache": cache,
        "decoder": {"partition": partition, "kind": decoder_kind},
        "tokenizer": tokenizer,
    }


def _partition(manifest: Manifest, partition_id: str) -> PartitionSpec:
    for part in manifest.partitions:
        if part.id == partition_id:
            return part
    raise ArtifactError(f"causal-lm manifest: decoder partition '{partition_id}' does not exist")


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArtifactError(f"causal-lm manifest: {what} must be an integer, not {value!r}")
    return value


def _positive(value: Any, what: str) -> int:
    number = _int(value, what)
    if number <= 0:
        raise ArtifactError(f"causal-lm manifest: {what} must be positive, not {number}")
    return number

"""Causal language models (extra ``[llm]``): load one, export its decoder step, keep its tokenizer.

Accepted sources: a ``.gguf`` file (``transformers`` dequantizes it to float), a Hugging Face
directory whose ``config.json`` names a ``*ForCausalLM`` / ``*LMHeadModel`` architecture, and a
``transformers`` ``PreTrainedModel`` (its tokenizer passed as ``tokenizer=``).

The decoder step is one graph for prefill and decode, exported by ``torch.onnx.export`` (dynamo)
from the model's own ``forward`` with the KV cache as explicit tensors::

    inputs   input_ids       int64 [batch, seq]
             attention_mask  int64 [batch, total]      1 = a real token, 0 = padding
             position_ids    int64 [batch, seq]
             logit_index     int64 [n]                 positions (0..seq-1) whose logits to return
             past.I.key      float [batch, kv_heads_I, past, head_dim_I]  (and past.I.value)
    outputs  logits          float32 [batch, n, vocab]
             present.I.key   float [batch, kv_heads_I, past + seq, head_dim_I]  (and value)

``logit_index`` is the model's own ``logits_to_keep`` as a tensor: generation asks for the last
position only (the LM head over every prompt position is about a fifth of SmolLM2's prefill),
perplexity for all of them. Targets turn the past/present pairs into state (OpenVINO), bound
buffers (ONNX Runtime) or a static cache (cuda).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import io
import json
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ai_vmm.runtime.errors import ModelLoadError

_HINT = "pip install 'ai-vmm[llm,torch]'"
ARCHITECTURE_SUFFIXES = ("ForCausalLM", "LMHeadModel")
INPUTS = ("input_ids", "attention_mask", "position_ids", "logit_index")
DEFAULT_OPSET = 23
"""Opset 23 has ``Attention``, ``RMSNormalization`` and ``RotaryEmbedding``: the exporter emits
them for SDPA, RMSNorm and rotary, and both CPU runtimes run them (OpenVINO maps ``Attention``
to its ``ScaledDotProductAttention``, which its stateful KV-cache fusion needs)."""


@dataclass(frozen=True)
class KvLayout:
    """The shape of the KV cache: per layer, ``[batch, heads, length, head_dim]``."""

    heads: tuple[int, ...]
    head_dims: tuple[int, ...]
    dtype: str = "float32"

    @property
    def layers(self) -> int:
        return len(self.heads)

    def input_names(self) -> list[str]:
        return [f"past.{i}.{kv}" for i in range(self.layers) for kv in ("key", "value")]

    def output_names(self) -> list[str]:
        return [f"present.{i}.{kv}" for i in range(self.layers) for kv in ("key", "value")]

    def bytes_per_token(self) -> int:
        """Cache bytes one token of one sequence takes (keys and values, every layer)."""
        size = 2 if self.dtype in ("float16", "bfloat16") else 4
        return sum(2 * h * d * size for h, d in zip(self.heads, self.head_dims, strict=True))

    def to_json(self) -> dict[str, Any]:
        return {"heads": list(self.heads), "head_dims": list(self.head_dims), "dtype": self.dtype}


@dataclass
class CausalLMSource:
    """A loaded causal LM: the torch model (eval, float32), its tokenizer, where it came from."""

    model: Any
    tokenizer: Any
    label: str
    digest: str
    architecture: str
    notes: list[str] = field(default_factory=list)

    @property
    def config(self) -> Any:
        return self.model.config

    def eos_token_ids(self) -> list[int]:
        """Every token that ends a reply: the generation config's and the tokenizer's EOS."""
        found: list[int] = []
        generation = getattr(self.model, "generation_config", None)
        for value in (
            getattr(generation, "eos_token_id", None),
            getattr(self.config, "eos_token_id", None),
            getattr(self.tokenizer, "eos_token_id", None),
        ):
            for token in value if isinstance(value, list | tuple) else [value]:
                if isinstance(token, int) and token >= 0 and token not in found:
                    found.append(token)
        return found


@dataclass(frozen=True)
class DecoderExport:
    """The exported decoder step: an ONNX file (weights beside it) and its cache layout."""

    path: Path
    layout: KvLayout
    vocab_size: int
    opset: int


def is_causal_lm(source: Any) -> bool:
    """Whether ``source`` is a causal LM this frontend takes (never imports a framework)."""
    if isinstance(source, str | Path):
        path = Path(source)
        if path.suffix.lower() == ".gguf":
            return True
        config = path / "config.json"
        if path.is_dir() and config.is_file():
            try:
                names = json.loads(config.read_text()).get("architectures") or []
            except (OSError, ValueError, AttributeError):
                return False
            return any(str(n).endswith(ARCHITECTURE_SUFFIXES) for n in names)
        return False
    classes = [f"{c.__module__}.{c.__qualname__}" for c in type(source).__mro__]
    return any(name.startswith("transformers.") for name in classes) and type(
        source
    ).__name__.endswith(ARCHITECTURE_SUFFIXES)


def load_causal_lm(source: Any, tokenizer: Any = None) -> CausalLMSource:
    """Load a causal LM in float32 for export, with its tokenizer.

    Raises:
        ModelLoadError: missing packages, an unreadable file, or no tokenizer.
    """
    torch, transformers = _imports()
    notes: list[str] = []
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.exists():
            raise ModelLoadError(f"{path} does not exist")
        kwargs: dict[str, Any] = {}
        directory = path
        if path.suffix.lower() == ".gguf":
            directory, kwargs = path.parent, {"gguf_file": path.name}
            notes.append(f"GGUF {path.name} dequantized to float32 by transformers")
        try:
            with _quiet():
                model = transformers.AutoModelForCausalLM.from_pretrained(
                    str(directory), dtype=torch.float32, **kwargs
                )
                if tokenizer is None:
                    tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory), **kwargs)
        except ImportError as exc:
            raise ModelLoadError(f"loading {path.name} needs {exc.name or exc}: {_HINT}") from exc
        except Exception as exc:
            raise ModelLoadError(f"transformers cannot load {path}: {_one_line(exc)}") from exc
        label, digest = str(path), source_digest(path)
    else:
        if tokenizer is None:
            raise ModelLoadError(
                f"a {type(source).__name__} needs its tokenizer: "
                f"ai_vmm.compile(model, tokenizer=AutoTokenizer.from_pretrained(...))"
            )
        # Exported in float32; a model in another precision is copied, the caller's stays as it is.
        model = copy.deepcopy(source).float() if _needs_float32(torch, source) else source
        label, digest = f"<{type(source).__name__}>", _module_digest(torch, source)
    model.eval()
    architecture = type(model).__name__
    return CausalLMSource(model, tokenizer, label, digest, architecture, notes)


def kv_layout(source: CausalLMSource) -> KvLayout:
    """The cache layout, read off one forward pass of two tokens (every architecture's own)."""
    torch, _ = _imports()
    with torch.no_grad(), _quiet():
        out = source.model(input_ids=torch.tensor([[1, 2]]), use_cache=True)
    pairs = _cache_pairs(_output_cache(out))
    if not pairs:
        raise ModelLoadError(f"{source.label}: the model returned no KV cache (use_cache=True)")
    heads = tuple(int(k.shape[1]) for k, _ in pairs)
    dims = tuple(int(k.shape[3]) for k, _ in pairs)
    if any(k.shape != v.shape for k, v in pairs):
        raise ModelLoadError(
            f"{source.label}: keys and values of the KV cache differ in shape (MLA-style caches "
            f"are not supported yet)"
        )
    return KvLayout(heads, dims, str(pairs[0][0].dtype).removeprefix("torch."))


def export_decoder(
    source: CausalLMSource, out_dir: Path, *, opset: int = DEFAULT_OPSET
) -> DecoderExport:
    """Export the decoder step to ``out_dir/decoder.onnx`` (weights in ``decoder.onnx.data``).

    Raises:
        ModelLoadError: the exporter failed (the message quotes PyTorch).
    """
    torch, _ = _imports()
    layout = kv_layout(source)
    step = _DecoderStep(torch, source.model, layout.layers)
    batch, seq, past = 2, 5, 3
    generator = torch.Generator().manual_seed(0)
    vocab = int(source.config.get_text_config().vocab_size)
    example: list[Any] = [
        torch.randint(0, min(vocab, 1000), (batch, seq), generator=generator),
        torch.ones(batch, past + seq, dtype=torch.int64),
        torch.arange(past, past + seq).repeat(batch, 1),
        torch.tensor([seq - 2, seq - 1]),
    ]
    for heads, dim in zip(layout.heads, layout.head_dims, strict=True):
        for _ in range(2):
            example.append(torch.randn(batch, heads, past, dim, generator=generator))
    dims = {name: torch.export.Dim(name) for name in ("batch", "seq", "total", "past", "n")}
    dynamic: dict[str, Any] = {
        "input_ids": {0: dims["batch"], 1: dims["seq"]},
        "attention_mask": {0: dims["batch"], 1: dims["total"]},
        "position_ids": {0: dims["batch"], 1: dims["seq"]},
        "logit_index": {0: dims["n"]},
        "past": tuple({0: dims["batch"], 2: dims["past"]} for _ in range(2 * layout.layers)),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "decoder.onnx"
    try:
        with torch.no_grad(), _quiet():
            program = torch.onnx.export(
                step,
                tuple(example),
                dynamic_shapes=dynamic,
                input_names=[*INPUTS, *layout.input_names()],
                output_names=["logits", *layout.output_names()],
                opset_version=opset,
                dynamo=True,
                verbose=False,
                report=False,
                verify=False,
            )
            program.save(str(path), external_data=True)
    except ImportError as exc:
        raise ModelLoadError(f"exporting {source.label} needs {exc.name or exc}: {_HINT}") from exc
    except Exception as exc:
        raise ModelLoadError(
            f"torch.onnx.export failed on the decoder step of {source.label} "
            f"({source.architecture}): {_one_line(exc)}"
        ) from exc
    return DecoderExport(path, layout, vocab, opset)


def save_tokenizer(source: CausalLMSource, out_dir: Path) -> dict[str, Any]:
    """Write ``tokenizer.json`` (and ``chat_template.jinja`` when the model has one).

    Returns:
        What the runtime needs besides the files: special tokens and their ids.

    Raises:
        ModelLoadError: the tokenizer is not a fast (``tokenizers``) one.
    """
    tokenizer = source.tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(
        tokenizer, "_tokenizer", None
    )
    if backend is None or not hasattr(backend, "to_str"):
        raise ModelLoadError(
            f"{source.label}: the tokenizer ({type(tokenizer).__name__}) has no fast "
            f"'tokenizers' backend, which the runtime needs"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.json").write_text(backend.to_str(pretty=False), encoding="utf-8")
    files = {"tokenizer": "tokenizer.json"}
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the default one
        template = template.get("default")
    if isinstance(template, str) and template:
        (out_dir / "chat_template.jinja").write_text(template, encoding="utf-8")
        files["chat_template"] = "chat_template.jinja"
    special = {
        name: token
        for name in ("bos_token", "eos_token", "pad_token", "unk_token")
        if isinstance(token := getattr(tokenizer, name, None), str)
    }
    pad = getattr(tokenizer, "pad_token_id", None)
    eos = source.eos_token_ids()
    return {
        "files": files,
        "special_tokens": special,
        "bos_token_id": getattr(tokenizer, "bos_token_id", None),
        "eos_token_ids": eos,
        "pad_token_id": pad if isinstance(pad, int) else (eos[0] if eos else 0),
    }


def reference_greedy(
    source: CausalLMSource, prompt: Sequence[int], max_new_tokens: int, *, block_eos: bool
) -> list[int]:
    """What ``transformers`` ``generate`` answers greedily (the parity reference)."""
    torch, _ = _imports()
    ids = torch.tensor([list(prompt)])
    extra: dict[str, Any] = {"min_new_tokens": max_new_tokens} if block_eos else {}
    with torch.no_grad(), _quiet():
        out = source.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=source.eos_token_ids()[0] if source.eos_token_ids() else 0,
            **extra,
        )
    return [int(t) for t in out[0, len(prompt) :]]


class _DecoderStep:
    """Builds the ``torch.nn.Module`` that the exporter traces (``torch`` imported lazily)."""

    def __new__(cls, torch: Any, model: Any, layers: int) -> Any:
        from transformers import DynamicCache

        parameters = inspect.signature(model.forward).parameters
        cache_kw = "cache" if "cache" in parameters else "past_key_values"

        class DecoderStep(torch.nn.Module):  # type: ignore[misc,name-defined]
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(
                self,
                input_ids: Any,
                attention_mask: Any,
                position_ids: Any,
                logit_index: Any,
                *past: Any,
            ) -> tuple[Any, ...]:
                cache = DynamicCache([(past[2 * i], past[2 * i + 1]) for i in range(layers)])
                out = self.model(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    position_ids=position_ids,
                    use_cache=True,
                    logits_to_keep=logit_index,
                    **{cache_kw: cache},
                )
                flat = [t for pair in _cache_pairs(_output_cache(out)) for t in pair]
                return (out.logits.float(), *flat)

        return DecoderStep().eval()


def _output_cache(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def _cache_pairs(cache: Any) -> list[tuple[Any, Any]]:
    """(keys, values) per layer of a ``transformers`` cache object, old API or new."""
    if cache is None:
        return []
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return [(layer.keys, layer.values) for layer in layers]
    if hasattr(cache, "key_cache"):
        return list(zip(cache.key_cache, cache.value_cache, strict=True))
    return [(pair[0], pair[1]) for pair in cache]


def _imports() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise ModelLoadError(f"causal LMs need {exc.name or exc}: {_HINT}") from exc
    return torch, transformers


def _needs_float32(torch: Any, module: Any) -> bool:
    return any(p.dtype != torch.float32 for p in module.parameters())


def source_digest(path: Path) -> str:
    """sha256 of a file, or of a directory's files (names and contents, sorted)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(file.relative_to(path.parent if path.is_file() else path).as_posix().encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _module_digest(torch: Any, module: Any) -> str:
    digest = hashlib.sha256(json.dumps(module.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's and transformers' chatter (warnings, logging, prints)."""
    loggers = [logging.getLogger(n) for n in ("torch", "torch.onnx", "transformers", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:400]}" if text else type(exc).__name__


__all__ = [
    "CausalLMSource",
    "DecoderExport",
    "KvLayout",
    "export_decoder",
    "is_causal_lm",
    "kv_layout",
    "load_causal_lm",
    "reference_greedy",
    "save_tokenizer",
    "source_digest",
]

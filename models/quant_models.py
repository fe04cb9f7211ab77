"""Real models and real data for quantization tests and benchmarks (never random weights).

- ``train_digits_cnn``: a small CNN trained in seconds with torch on scikit-learn's digits
  (8x8 handwritten digits, 1,797 real samples), exported to ONNX with a dynamic batch; returns
  the train / calibration / held-out splits with their labels.
- ``export_minilm``: all-MiniLM-L6-v2 (real weights from ``shared/realmodels/fetch.sh``) built as
  ``transformers.BertModel`` and exported to ONNX (``input_ids``, ``attention_mask``,
  ``token_type_ids``: int64, dynamic batch and sequence).
- ``docstring_sentences``: real English sentences, the first sentence of the Python standard
  library's module docstrings.
- ``export_minilm_decoder``: the same real weights run as a causal decoder with tied input and
  output embeddings, for weight-only compression (output similarity and file size).

``models/`` is not an installed package: import this file by path (``importlib``).
"""

from __future__ import annotations

import json
import re
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REALMODELS_CACHE = Path.home() / ".cache" / "ai-vmm" / "realmodels"
MINILM_FILES = (
    "all_minilm_l6_v2.safetensors",
    "all_minilm_l6_v2.config.json",
    "bert_uncased_tokenizer.json",
)


@dataclass
class DigitsSplits:
    """The digits data split three ways (no sample in two splits)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_calib: np.ndarray
    y_calib: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def digits_splits(seed: int = 0) -> DigitsSplits:
    """scikit-learn's digits as float32 [N, 1, 8, 8] in [0, 1]: 60% train, 15% calib, 25% test."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None, :, :]
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    n_train, n_calib = int(0.6 * len(x)), int(0.15 * len(x))
    a, b = n_train, n_train + n_calib
    return DigitsSplits(x[:a], y[:a], x[a:b], y[a:b], x[b:], y[b:])


def train_digits_cnn(out: Path, seed: int = 0, epochs: int = 10) -> tuple[Path, DigitsSplits]:
    """Train a 3-conv CNN on the digits train split and export it to ``out`` (ONNX, opset 17).

    Input ``pixels`` [batch, 1, 8, 8] float32, output ``logits`` [batch, 10].
    """
    import torch

    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: fork/join of several threads only costs here
    try:
        return _train_digits(out, seed, epochs)
    finally:
        torch.set_num_threads(threads)


def _train_digits(out: Path, seed: int, epochs: int) -> tuple[Path, DigitsSplits]:
    import torch
    from torch import nn

    splits = digits_splits(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = torch.from_numpy(splits.x_train)
    y = torch.from_numpy(splits.y_train)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 64):
            batch = order[start : start + 64]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
    model.eval()
    torch.onnx.export(
        model,
        (torch.from_numpy(splits.x_test[:2]),),
        str(out),
        input_names=["pixels"],
        output_names=["logits"],
        dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    return out, splits


def fetch_realmodels(cache: Path = REALMODELS_CACHE) -> Path:
    """Run ``shared/realmodels/fetch.sh`` into ``cache`` (idempotent); raise if it fails."""
    if all((cache / name).is_file() for name in MINILM_FILES):
        return cache
    script = REPO.parent / "shared" / "realmodels" / "fetch.sh"
    if not script.is_file():
        raise FileNotFoundError(f"{script} is missing: cannot fetch the real models")
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(["bash", str(script), str(cache)], check=True, capture_output=True, text=True)
    return cache


def export_minilm(out: Path, cache: Path = REALMODELS_CACHE) -> Path:
    """Export the real all-MiniLM-L6-v2 as ONNX (three int64 inputs, dynamic batch x seq)."""
    import transformers
    from safetensors.torch import load_file

    config = transformers.BertConfig.from_json_file(str(cache / "all_minilm_l6_v2.config.json"))
    config._attn_implementation = "eager"
    model = transformers.BertModel(config, add_pooling_layer=False)
    state = load_file(str(cache / "all_minilm_l6_v2.safetensors"))
    state = {k.removeprefix("bert."): v for k, v in state.items()}
    missing, _unexpected = model.load_state_dict(state, strict=False)
    real_missing = [k for k in missing if "position_ids" not in k]
    if real_missing:
        raise RuntimeError(f"MiniLM weights are missing {real_missing[:5]}")
    model.eval()
    return export_bert_last_hidden(model, out)


def export_bert_last_hidden(model: Any, out: Path) -> Path:
    """Export a ``transformers.BertModel`` as ONNX: its last hidden state from three int64
    inputs (``input_ids``, ``attention_mask``, ``token_type_ids``), dynamic batch x sequence,
    opset 17 (the TorchScript exporter)."""
    import torch

    class LastHidden(torch.nn.Module):
        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    ids = torch.ones((2, 9), dtype=torch.int64)
    dynamic = {0: "batch", 1: "sequence"}
    with torch.no_grad():
        torch.onnx.export(
            LastHidden(model),
            (ids, torch.ones_like(ids), torch.zeros_like(ids)),
            str(out),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["last_hidden_state"],
            dynamic_axes={
                "input_ids": dynamic,
                "attention_mask": dynamic,
                "token_type_ids": dynamic,
                "last_hidden_state": dynamic,
            },
            opset_version=17,
            dynamo=False,
        )
    return out


def docstring_sentences(count: int) -> list[str]:
    """First sentences of the standard library's module docstrings (read with ``ast``, no imports).

    Modules are visited in sorted path order (tests and ``site-packages`` left out); a sentence
    is the first paragraph's first sentence, kept when it has 4 to 40 words and was not seen.
    """
    import ast
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    sentences: list[str] = []
    seen: set[str] = set()
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if any(p in ("site-packages", "test", "tests", "idle_test") for p in parts):
            continue
        try:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        paragraph = " ".join((doc or "").strip().split("\n\n")[0].split())
        first = re.split(r"(?<=[.!?])\s", paragraph, maxsplit=1)[0]
        words = first.split()
        if not 4 <= len(words) <= 40 or not first[0].isalpha() or first in seen:
            continue
        seen.add(first)
        sentences.append(first)
        if len(sentences) >= count:
            break
    return sentences


def export_minilm_decoder(out: Path, cache: Path = REALMODELS_CACHE) -> Path:
    """all-MiniLM-L6-v2's real weights run as a causal transformer decoder, exported to ONNX.

    ``BertModel`` with ``is_decoder=True`` (causal self-attention) and logits through the tied
    word embeddings (``hidden @ E^T``), so every weight is a real pretrained one and the token
    embedding table is shared by the input lookup and the output projection, as in GPT-2. It is
    not a trained language model: use it to measure how far compression moves the outputs,
    never for perplexity. Input ``input_ids`` [batch, seq] int64, output ``logits``
    [batch, seq, 30522].
    """
    import torch
    import transformers
    from safetensors.torch import load_file

    config = transformers.BertConfig.from_json_file(str(cache / "all_minilm_l6_v2.config.json"))
    config.is_decoder = True
    config._attn_implementation = "eager"
    bert = transformers.BertModel(config, add_pooling_layer=False)
    state = load_file(str(cache / "all_minilm_l6_v2.safetensors"))
    bert.load_state_dict({k.removeprefix("bert."): v for k, v in state.items()}, strict=False)
    bert.eval()

    class Decoder(torch.nn.Module):
        def __init__(self, body: Any) -> None:
            super().__init__()
            self.body = body

        def forward(self, input_ids: Any) -> Any:
            hidden = self.body(input_ids=input_ids, use_cache=False).last_hidden_state
            return hidden @ self.body.embeddings.word_embeddings.weight.T

    ids = torch.ones((2, 9), dtype=torch.int64)
    dynamic = {0: "batch", 1: "sequence"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Decoder(bert),
            (ids,),
            str(out),
            input_names=["input_ids"],
            output_names=["logits"],
            dynamic_axes={"input_ids": dynamic, "logits": dynamic},
            opset_version=17,
            dynamo=False,
        )
    return out


def minilm_feeds(sentences: list[str], cache: Path = REALMODELS_CACHE) -> list[dict[str, Any]]:
    """One input dict per sentence (batch 1, its own length), from the real tokenizer."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(cache / "bert_uncased_tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(128)
    feeds = []
    for sentence in sentences:
        encoding = tokenizer.encode(sentence)
        ids = np.asarray([encoding.ids], dtype=np.int64)
        feeds.append(
            {
                "input_ids": ids,
                "attention_mask": np.asarray([encoding.attention_mask], dtype=np.int64),
                "token_type_ids": np.zeros_like(ids),
            }
        )
    return feeds


def sentence_embedding(last_hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of the last hidden state over the attention mask, L2-normalised (per row)."""
    weights = mask[..., None].astype(np.float32)
    pooled = (last_hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
    return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)


if __name__ == "__main__":
    print(json.dumps(docstring_sentences(5), indent=1))

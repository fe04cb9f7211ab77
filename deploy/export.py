"""Framework models (``nn.Module``, a Hugging Face folder, TFLite, Keras ...) to ONNX, once.

The search compiles several candidates from one model; exporting a framework model takes
seconds to a minute, so it is exported once, through the compiler's own frontends
(``ai_vmm.frontends.load_model``), into the deployment store (``sources/<digest>.onnx``), and
every candidate compiles that file. A Hugging Face folder that is not a causal LM is loaded with
``transformers.AutoModel.from_pretrained`` (local files only: its own weights, never random
ones) and exported like any ``nn.Module``.

The example inputs are the first sample as given; axes whose size differs between samples, and
the leading axis when batching may be tried, are exported as dynamic. If PyTorch cannot export
them dynamic (``torch.export`` specialises some, e.g. an LSTM's time axis), the export is
retried at the samples' static shapes and a note says so.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ai_vmm.deploy.resolve import ResolvedModel, read_hf_config
from ai_vmm.deploy.store import DeploymentStore, digest
from ai_vmm.runtime.errors import InputError, ModelLoadError, VmmError

Say = Callable[[str], None]
HF_SYNTHETIC_TOKENS = 16


def raw_examples(samples: Any) -> list[dict[str, np.ndarray]]:
    """The samples as given (no signature to check them against yet): a list of dicts."""
    if samples is None:
        return []
    from ai_vmm.deploy.samples import read_samples

    return read_samples(samples)[0]


def export_source(
    resolved: ResolvedModel,
    model_digest: str,
    samples: Any,
    store: DeploymentStore,
    *,
    batching: bool,
    say: Say,
) -> tuple[Path, list[str], list[dict[str, np.ndarray]] | None]:
    """The ONNX file of a framework model (exported once per model and example signature).

    Returns:
        The ONNX path, notes for the explanation, and the samples to use when the user gave
        none and some had to be made (a Hugging Face encoder), else ``None``.

    Raises:
        ModelLoadError: the model cannot be loaded or exported (PyTorch's own reason quoted).
        InputError: an ``nn.Module`` without samples (its inputs are unknown).
    """
    from ai_vmm.targets.base import save_onnx

    notes: list[str] = []
    made: list[dict[str, np.ndarray]] | None = None
    examples = raw_examples(samples)
    source: Any = resolved.source
    options: dict[str, Any] = {}
    if resolved.kind == "hf-model":
        source = _load_hf(Path(resolved.source))
        notes.append(f"loaded with transformers.AutoModel from {resolved.source}")
        if not examples:
            made = _hf_examples(Path(resolved.source))
            examples = made
            notes.append(
                f"no samples given: {HF_SYNTHETIC_TOKENS} synthetic token ids within the "
                "vocabulary (figures at that length; accuracy on made-up ids is indicative only)"
            )
    if resolved.kind in ("torch-module", "hf-model"):
        if not examples:
            raise InputError(
                f"{resolved.label}: an nn.Module needs samples= (a dict of input name -> array) "
                "to know its inputs"
            )
        dynamic = _dynamic_axes(examples, batching)
        options["example_inputs"] = _example(examples[0], dynamic)
        if dynamic:
            options["dynamic_shapes"] = dynamic
    key = digest(
        {
            "model": model_digest,
            "examples": [
                {k: [str(v.dtype), list(v.shape)] for k, v in e.items()} for e in examples[:1]
            ],
            "dynamic": options.get("dynamic_shapes"),
        }
    )
    path = store.path("sources", f"{key}.onnx")
    if path.is_file():
        return path, [*notes, f"exported earlier to {path}"], made
    loaded = _load(source, options, resolved.label, say)
    if loaded is None and "dynamic_shapes" in options:
        options.pop("dynamic_shapes")
        notes.append(
            "exported at the samples' static shapes: PyTorch could not export them dynamic"
        )
        loaded = _load(source, options, resolved.label, say)
    if loaded is None:
        raise ModelLoadError(f"{resolved.label}: export to ONNX failed")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.part")
    save_onnx(loaded.model, partial)
    partial.replace(path)
    notes += [f"exported to ONNX ({path})", *loaded.notes[:3]]
    return path, notes, made


def _load(source: Any, options: dict[str, Any], label: str, say: Say) -> Any:
    from ai_vmm.frontends import load_model

    say(f"exporting {label} to ONNX")
    try:
        return load_model(source, options)
    except ModelLoadError:
        if "dynamic_shapes" in options:
            return None
        raise
    except VmmError:
        raise
    except Exception as exc:  # a framework's own failure: one line
        if "dynamic_shapes" in options:
            return None
        raise ModelLoadError(f"{label}: export failed: {type(exc).__name__}: {exc}") from exc


def _example(example: dict[str, np.ndarray], dynamic: dict[str, Any]) -> dict[str, np.ndarray]:
    """The first sample, with a dynamic axis of size 1 doubled: ``torch.export`` specialises
    sizes 0 and 1, so a batch axis exported from a batch of one would come out static."""
    shaped = {}
    for name, array in example.items():
        for axis in dynamic.get(name, {}):
            if array.shape[axis] == 1:
                array = np.concatenate([array, array], axis=axis)
        shaped[name] = array
    return shaped


def _dynamic_axes(examples: list[dict[str, np.ndarray]], batching: bool) -> dict[str, Any]:
    """Axes that vary between samples (a name per distinct size pattern) and the batch axis."""
    first = examples[0]
    dynamic: dict[str, dict[int, str]] = {}
    for name, array in first.items():
        axes: dict[int, str] = {}
        for axis in range(array.ndim):
            sizes = tuple(int(np.shape(e[name])[axis]) for e in examples if name in e)
            if axis == 0 and batching:
                axes[axis] = "batch"
            elif len(set(sizes)) > 1:
                axes[axis] = "d" + digest({"sizes": list(sizes)})[:8]
        if axes:
            dynamic[name] = axes
    return dynamic


def _load_hf(folder: Path) -> Any:
    try:
        from transformers import AutoModel
    except ImportError as exc:
        raise ModelLoadError(
            f"{folder}: loading a Hugging Face model needs transformers (pip install "
            f"'ai-vmm[llm]'): {exc}"
        ) from exc
    try:
        model = AutoModel.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # missing weights, unknown architecture ...: one line
        text = " ".join(str(exc).split())[:300]
        raise ModelLoadError(f"{folder}: transformers cannot load this model: {text}") from exc
    model.eval()
    return model


def _hf_examples(folder: Path) -> list[dict[str, np.ndarray]]:
    config = read_hf_config(folder)
    vocab = int(config.get("vocab_size") or 0)
    if vocab < 2:
        raise InputError(f"{folder}: give samples= (the config names no vocab_size)")
    rng = np.random.default_rng(0)
    examples = []
    for _ in range(8):
        ids = rng.integers(1, vocab, size=(1, HF_SYNTHETIC_TOKENS), dtype=np.int64)
        example = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if int(config.get("type_vocab_size") or 0) > 0:
            example["token_type_ids"] = np.zeros_like(ids)
        examples.append(example)
    return examples

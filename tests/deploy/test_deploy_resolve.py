"""Model resolution without a hub: formats read from files, the HF cache layout, our store."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

import ai_vmm
from ai_vmm import ModelLoadError
from ai_vmm.deploy.resolve import hf_cache_roots, model_digest, resolve
from ai_vmm.deploy.store import DeploymentStore
from tests_support import make_mlp_model


@pytest.fixture
def store(tmp_path: Path) -> DeploymentStore:
    return DeploymentStore(tmp_path / "store")


def _hf_folder(path: Path, architecture: str) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"architectures": [architecture]}))
    (path / "model.safetensors").write_bytes(b"weights")
    return path


def test_formats_detected_from_files(tmp_path: Path, store: DeploymentStore) -> None:
    onnx.save(make_mlp_model(), tmp_path / "m.onnx")
    assert resolve(tmp_path / "m.onnx", store).kind == "onnx"
    (tmp_path / "m.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    assert resolve(str(tmp_path / "m.gguf"), store).kind == "causal-lm"
    (tmp_path / "ir.xml").write_text('<?xml version="1.0"?>\n<net name="x" version="11"></net>')
    (tmp_path / "ir.bin").write_bytes(b"\0")
    assert resolve(tmp_path / "ir.xml", store).kind == "openvino-ir"
    assert resolve(_hf_folder(tmp_path / "lm", "LlamaForCausalLM"), store).kind == "causal-lm"
    assert resolve(_hf_folder(tmp_path / "enc", "BertModel"), store).kind == "hf-model"
    (tmp_path / "m.tflite").write_bytes(b"TFL3")
    assert resolve(tmp_path / "m.tflite", store).kind == "framework"
    ai_vmm.compile(tmp_path / "m.onnx", "onnxruntime:CPU", tmp_path / "m.vmm", tune=False)
    artifact = resolve(tmp_path / "m.vmm", store)
    assert artifact.kind == "artifact" and artifact.found.startswith("path")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("w.safetensors", b"x", "holds weights only"),
        ("bad.gguf", b"NOPE", "not a GGUF file"),
        ("lonely.xml", b"<net/>", "needs its weights beside it"),
        ("m.weird", b"x", "unknown model format '.weird'"),
    ],
)
def test_unusable_files_are_one_line_errors(
    tmp_path: Path, store: DeploymentStore, name: str, content: bytes, message: str
) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ModelLoadError, match=message):
        resolve(tmp_path / name, store)


def test_directory_without_a_model(tmp_path: Path, store: DeploymentStore) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="without manifest.json"):
        resolve(tmp_path / "empty", store)


def _cache_entry(root: Path, repo: str, commit: str, files: dict[str, bytes]) -> Path:
    folder = root / ("models--" + repo.replace("/", "--"))
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_bytes(data)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    return snapshot


def test_hugging_face_cache_layout(tmp_path: Path, store: DeploymentStore) -> None:
    hub = tmp_path / "hub"
    config = json.dumps({"architectures": ["LlamaForCausalLM"]}).encode()
    snapshot = _cache_entry(hub, "Org/Tiny", "abc123", {"config.json": config, "m.bin": b"w"})
    env = {"HF_HUB_CACHE": str(hub)}
    found = resolve("Org/Tiny", store, env)
    assert found.kind == "causal-lm" and Path(found.source) == snapshot
    assert found.model_id == "Org/Tiny" and "Hugging Face cache" in found.found
    assert Path(resolve("Org/Tiny@abc123", store, env).source) == snapshot
    ggufs = _cache_entry(
        hub, "Org/Quants", "def", {"a.Q4.gguf": b"GGUF....", "b.Q8.gguf": b"GGUF...."}
    )
    with pytest.raises(ModelLoadError, match="several GGUF files"):
        resolve("Org/Quants", store, env)
    picked = resolve("Org/Quants/b.Q8.gguf", store, env)
    assert picked.kind == "causal-lm" and Path(picked.source) == ggufs / "b.Q8.gguf"


def test_hf_home_and_default_roots() -> None:
    roots = hf_cache_roots({"HF_HOME": "/data/hf", "HF_HUB_CACHE": "/fast/hub"})
    assert roots[:2] == [Path("/fast/hub"), Path("/data/hf/hub")]
    assert roots[-1] == Path.home() / ".cache" / "huggingface" / "hub"


def test_unknown_id_lists_every_place_searched(tmp_path: Path, store: DeploymentStore) -> None:
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HOME": str(tmp_path / "home")}
    with pytest.raises(ModelLoadError) as info:
        resolve("Nobody/Nothing", store, env)
    message = str(info.value)
    assert "\n" not in message
    for place in (
        "path",
        str(tmp_path / "hub" / "models--Nobody--Nothing"),
        str(tmp_path / "home" / "hub" / "models--Nobody--Nothing"),
        str(store.named("Nobody/Nothing")),
        "never downloads",
        "random weights",
    ):
        assert place in message


def test_our_artifact_store(tmp_path: Path, store: DeploymentStore) -> None:
    onnx.save(make_mlp_model(), tmp_path / "m.onnx")
    ai_vmm.compile(tmp_path / "m.onnx", "onnxruntime:CPU", tmp_path / "m.vmm", tune=False)
    store.save_named("team/mlp", tmp_path / "m.vmm")
    found = resolve("team/mlp", store, {"HF_HUB_CACHE": str(tmp_path / "nohub")})
    assert found.kind == "artifact" and found.found.startswith("artifact store")


def test_digest_follows_content(tmp_path: Path, store: DeploymentStore) -> None:
    onnx.save(make_mlp_model(), tmp_path / "a.onnx")
    onnx.save(make_mlp_model(), tmp_path / "b.onnx")
    first = model_digest(resolve(tmp_path / "a.onnx", store))
    assert first == model_digest(resolve(tmp_path / "b.onnx", store))
    onnx.save(make_mlp_model(opset=18), tmp_path / "b.onnx")
    assert first != model_digest(resolve(tmp_path / "b.onnx", store))

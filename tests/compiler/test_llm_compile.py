"""The LM compile path through ``ai_vmm.compile``: routing, the artifact, the report, the gates,
bad options and damaged artifacts. Tiny random-weight models (tests/support/lm_support.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from lm_support import hf_dir, tiny_artifact

import ai_vmm
from ai_vmm.frontends.causal_lm import is_causal_lm
from ai_vmm.runtime.artifact import read_manifest
from ai_vmm.runtime.errors import ArtifactError, CompileError
from ai_vmm.runtime.llm.spec import LMSpec


def _tiny_openvino(output: Path, **options: Any) -> Any:
    """The tiny Llama compiled for openvino:CPU (tune off, the shared export cache)."""
    return ai_vmm.compile(
        hf_dir("llama"),
        target="openvino:CPU",
        output=output,
        tune=False,
        cache_dir=tiny_artifact("llama").parent / "cache",
        **options,
    )


def test_routing_detects_causal_lms(tmp_path: Path) -> None:
    assert is_causal_lm(hf_dir("llama")) and is_causal_lm(hf_dir("gpt2"))
    assert is_causal_lm(tmp_path / "model.gguf")
    encoder = tmp_path / "bert"
    encoder.mkdir()
    (encoder / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    assert not is_causal_lm(encoder) and not is_causal_lm(tmp_path / "model.onnx")


def test_artifact_manifest_and_report() -> None:
    root = tiny_artifact("llama", "onnxruntime:CPU")
    manifest = read_manifest(root)
    assert manifest.kind == "causal-lm"
    assert "tokenizer/tokenizer.json" in manifest.assets
    assert "tokenizer/chat_template.jinja" in manifest.assets
    spec = LMSpec.from_manifest(manifest)
    assert spec.decoder_kind == "explicit" and spec.cache.layers == 2
    assert spec.cache.heads == (2, 2) and spec.tokenizer.eos_token_ids == (2,)
    report = json.loads((root / "report.json").read_text())
    profile = report["profile"]
    assert profile["primary_label"] == "causal-decoder"
    evidence = profile["labels"][0]["evidence"]["patterns"]
    assert evidence["kv_cache"] == 4 and evidence["attention"] == 2 and evidence["causal_mask"]
    parity = report["candidates"][0]["parity"]
    assert parity["identical"] == parity["tokens"] == 24
    assert parity["tokenizer_matches_transformers"]


def test_openvino_artifact_is_stateful() -> None:
    root = tiny_artifact("llama", "openvino:CPU")
    manifest = read_manifest(root)
    assert LMSpec.from_manifest(manifest).decoder_kind == "stateful"
    from ai_vmm.targets.openvino_lm import fused_attention

    with ai_vmm.load(root) as lm:
        fused = fused_attention(lm._session.compiled_model)
    # Every attention node reads its cache straight from the state: the CPU plugin's
    # ReadValue -> Gather -> Concat -> SDPA -> Assign fusion happened for both layers.
    assert fused == {"attention": 2, "attention_with_cache": 2}


def test_damaged_tokenizer_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "copy.vmm"
    shutil.copytree(tiny_artifact("llama", "onnxruntime:CPU"), copy)
    with (copy / "tokenizer" / "tokenizer.json").open("a") as handle:
        handle.write(" ")
    with pytest.raises(ArtifactError, match=r"tokenizer/tokenizer\.json"):
        ai_vmm.load(copy)


def test_broken_llm_section_is_one_line_error(tmp_path: Path) -> None:
    copy = tmp_path / "copy.vmm"
    shutil.copytree(tiny_artifact("llama", "onnxruntime:CPU"), copy)
    data = json.loads((copy / "manifest.json").read_text())
    data["llm"]["decoder"]["kind"] = "quantum"
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="decoder kind 'quantum'"):
        ai_vmm.load(copy)
    del data["llm"]["cache"]
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="cache"):
        ai_vmm.load(copy)


def test_zip_artifact_generates_and_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "llama.vmm.zip"
    result = ai_vmm.compile(
        hf_dir("llama"),
        target="onnxruntime:CPU",
        output=out,
        tune=False,
        cache_dir=tiny_artifact("llama").parent / "cache",
    )
    assert out.is_file() and result.manifest["kind"] == "causal-lm"
    lm = ai_vmm.load(out)
    unpacked = Path(lm.root)
    assert lm.generate("Hello", max_new_tokens=3, min_new_tokens=3).completion_tokens == 3
    lm.close()
    assert not unpacked.exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"quantize": "int8"}, "weight-only"),
        ({"weights": "int3"}, "int8 or int4"),
        ({"precision": "fp8"}, "precision"),
        ({"example_inputs": (1,)}, "do not apply"),
        ({"ratio": 1.5}, "ratio"),
        ({"calibration": "Real text for INT4."}, "needs weights='int4'"),
        ({"weights": "int4", "calibration": "Too short."}, "no window of 16 tokens"),
    ],
)
def test_bad_options_are_compile_errors(
    tmp_path: Path, options: dict[str, object], message: str
) -> None:
    with pytest.raises(CompileError, match=message):
        ai_vmm.compile(
            hf_dir("llama"), target="onnxruntime:CPU", output=tmp_path / "x.vmm", **options
        )
    assert not (tmp_path / "x.vmm").exists()


def test_weight_compression_goes_through_the_quality_gate(tmp_path: Path) -> None:
    result = _tiny_openvino(tmp_path / "int8.vmm", weights="int8")
    quality = result.report["candidates"][0]["quality"]
    gate = quality["gate"]
    for attempt in quality["attempts"]:  # the plugin's activation groups, then the fallbacks
        assert attempt["mode"] == "int8" and attempt["float_perplexity"] > 1
        passed = (
            attempt["increase"] <= gate["max_perplexity_increase"]
            and attempt["agreement"] >= gate["min_agreement"]
            and not attempt["looping_replies"]
        )
        assert attempt["passed"] == passed
    assert [a["passed"] for a in quality["attempts"][:-1]] == [False] * (
        len(quality["attempts"]) - 1
    )  # the gate stops at the first pass
    kept = result.report["candidates"][0]["weights"]
    assert (kept is not None) == quality["attempts"][-1]["passed"]
    with ai_vmm.load(result.path) as lm:
        assert lm.generate("Hello", max_new_tokens=4, min_new_tokens=4).completion_tokens == 4


def test_int4_is_calibrated_on_the_users_text(tmp_path: Path) -> None:
    """INT4 on OpenVINO is data-aware (AWQ, scale estimation, activation sensitivity),
    calibrated on the text the user passed as ``calibration``; the report says so."""
    lines = [
        {"text": "The quick brown fox jumps over the lazy dog while the cat sleeps. " * 8},
        "A plain string line is text too, and calibration reads every line of the file. " * 8,
    ]
    corpus = tmp_path / "prompts.jsonl"
    corpus.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    result = _tiny_openvino(
        tmp_path / "int4.vmm",
        weights="int4",
        ratio=0.1,  # one attempt: the ladder starts at the given ratio
        calibration=corpus,
        force_quantize=True,
    )
    calibration = result.report["calibration"]
    assert calibration["source"] == "the given text" and calibration["windows"] >= 2
    attempt = result.report["candidates"][0]["quality"]["attempts"][0]
    assert "data-aware (AWQ, scale estimation" in attempt["notes"][0]
    kept_int8 = attempt["notes"][1]  # by the transformers module names, not the graph's
    assert "lm_head" in kept_int8 and "model.layers.0." in kept_int8, kept_int8
    assert result.report["candidates"][0]["weights"] is not None  # forced: kept either way
    with ai_vmm.load(result.path) as lm:
        assert lm.generate("Hello", max_new_tokens=4, min_new_tokens=4).completion_tokens == 4


def test_calibration_text_sources(tmp_path: Path) -> None:
    from ai_vmm.llm_compile import calibration_texts

    assert calibration_texts(None) == ()
    assert calibration_texts("some text") == ("some text",)
    assert calibration_texts(["a", " ", "b"]) == ("a", "b")
    plain = tmp_path / "notes.txt"
    plain.write_text("line one\nline two\n")
    assert calibration_texts(plain) == ("line one\nline two\n",)
    assert calibration_texts(str(plain)) == ("line one\nline two\n",)
    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "first"}\n\n"second"\n')
    assert calibration_texts(good) == ("first", "second")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "first"}\n{"prompt": 3}\n')
    with pytest.raises(CompileError, match=r"bad.jsonl:2: .*'text' string"):
        calibration_texts(bad)
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    with pytest.raises(CompileError, match=r"broken.jsonl:1: not JSON"):
        calibration_texts(broken)
    with pytest.raises(CompileError, match="cannot read"):
        calibration_texts(tmp_path / "missing.txt")
    with pytest.raises(CompileError, match="is text"):
        calibration_texts({"input_ids": [1, 2]})
    with pytest.raises(CompileError, match="empty"):
        calibration_texts(["  "])
    prose = "A long line of calibration prose without a newline. " * 20  # > NAME_MAX
    assert calibration_texts(prose) == (prose,)


def test_distinct_share_sees_a_looping_reply() -> None:
    from ai_vmm.llm_quality import distinct_share

    assert distinct_share(list(range(64))) == 1.0
    loop = [5, 6, 7] * 20  # "la France, la France, ..."
    assert distinct_share(loop) < 0.1
    assert distinct_share([1, 2]) == 1.0  # too short to judge


def test_runtime_config_sets_dynamic_quantization(tmp_path: Path) -> None:
    """The gate's fallback reloads a compressed candidate with other activation groups; the
    OpenVINO LM runtime must apply the config it is given (0 turns it off)."""
    result = _tiny_openvino(tmp_path / "int8.vmm", weights="int8", force_quantize=True)
    manifest_path = result.path / "manifest.json"
    with ai_vmm.load(result.path) as lm:
        default = int(lm.backend_property("DYNAMIC_QUANTIZATION_GROUP_SIZE"))
    for group in (0, 64):
        manifest = json.loads(manifest_path.read_text())
        manifest["partitions"][0]["config"]["dynamic_quantization_group_size"] = group
        manifest_path.write_text(json.dumps(manifest))
        with ai_vmm.load(result.path) as lm:
            got = int(lm.backend_property("DYNAMIC_QUANTIZATION_GROUP_SIZE"))
            # A CPU without VNNI/AMX may not quantize activations at all (default 0).
            assert got == group or (default == 0 and got == 0), (default, group, got)
            assert lm.generate("Hello", max_new_tokens=3, min_new_tokens=3).completion_tokens == 3


def test_bf16_on_the_openvino_cpu_where_it_computes_in_bf16(tmp_path: Path) -> None:
    """bf16 activations and KV cache on a CPU with bf16 compute (AMX); elsewhere a one-line
    refusal that names what the CPU has."""
    from ai_vmm.targets.openvino_lm import capabilities

    if "BF16" not in capabilities("CPU"):
        with pytest.raises(CompileError, match="no bf16 compute"):
            _tiny_openvino(tmp_path / "bf16.vmm", precision="bf16")
        return
    result = _tiny_openvino(tmp_path / "bf16.vmm", precision="bf16")
    config = result.report["candidates"][0]["partition_config"]
    assert config["inference_precision"] == "bf16" and config["kv_cache_precision"] == "bf16"
    assert result.report["candidates"][0]["parity"]["identical"] >= 1  # first token at least
    with ai_vmm.load(result.path) as lm:
        compiled = lm._session.compiled_model
        assert "bfloat16" in str(compiled.get_property("INFERENCE_PRECISION_HINT"))
        assert lm.generate("Hello", max_new_tokens=4, min_new_tokens=4).completion_tokens == 4
        stateful_first = lm.generate("Hello", max_new_tokens=1).tokens  # type: ignore[union-attr]
    _check_bf16_paged(result.path, tmp_path / "bf16-paged.vmm", stateful_first)


def _check_bf16_paged(source: Path, path: Path, stateful_first: list[int]) -> None:
    """The same bf16 decoder with PagedAttention: a bf16 KV cache in our blocks (its bits read
    and written as bf16, not as the float16 numbers OpenVINO's Python shows)."""
    import numpy as np

    shutil.copytree(source, path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["partitions"][0]["config"]["attention"] = "paged"
    (path / "manifest.json").write_text(json.dumps(manifest))
    with ai_vmm.load(path) as lm:
        assert lm.attention == ("paged", None)
        assert lm.generate("Hello", max_new_tokens=1).tokens == stateful_first  # type: ignore[union-attr]
        prompts = ["Hello there", "A longer prompt than the first one, to pad the other"]
        alone = [lm.generate(p, max_new_tokens=6, min_new_tokens=6).tokens for p in prompts]  # type: ignore[union-attr]
        assert [r.tokens for r in lm.generate(prompts, max_new_tokens=6, min_new_tokens=6)] == alone  # type: ignore[union-attr]
        first, second = lm._session.context(), lm._session.context()
        ids = np.array([lm.encode_prompt("Hello there")])
        n = ids.shape[1]
        mask, positions = np.ones((1, n), np.int64), np.arange(n)[None]
        first.forward(ids, mask, positions, np.array([n - 1]))
        second.write_cache(first.read_cache())  # through float32 and back: exact for bf16
        assert all(
            np.array_equal(a, b)
            for a, b in zip(first.read_cache(), second.read_cache(), strict=True)
        )
        step = (np.array([[7]]), np.ones((1, n + 1), np.int64), np.array([[n]]), np.zeros(1, int))
        assert np.array_equal(first.forward(*step), second.forward(*step))


@pytest.mark.parametrize("faster", ["paged", "stateful"])
def test_tuned_compile_keeps_the_faster_attention(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, faster: str
) -> None:
    """The choice follows the measurements (scripted here: the real ones are machine noise
    on a tiny model); the artifact, the compressed attempts and the loaded decoder follow it."""
    from ai_vmm import llm_attention
    from ai_vmm.llm_quality import Speed

    seen: list[str] = []

    def scripted(lm: Any, prompt: Any, new_tokens: int, runs: int = 3) -> Speed:
        mode = lm.attention[0]
        seen.append(mode)
        return Speed(len(prompt), new_tokens, 0.05, 100.0 if mode == faster else 50.0, runs)

    monkeypatch.setattr(llm_attention, "measure_speed", scripted)
    result = ai_vmm.compile(
        hf_dir("llama"),
        target="openvino:CPU",
        output=tmp_path / "tuned.vmm",
        weights="int8",
        cache_dir=tmp_path / "cache",  # not the shared one: a cached artifact skips the choice
    )
    attention = result.report["attention"]
    assert seen.count("paged") == seen.count("stateful") == llm_attention.CHOICE_ROUNDS
    assert attention["chosen"] == faster, attention
    assert attention["paged"]["decode_tok_s"] == (100.0 if faster == "paged" else 50.0)
    assert result.manifest["partitions"][0]["config"]["attention"] == faster
    assert result.report["candidates"][0]["quality"]["attempts"]  # the gate ran on it
    with ai_vmm.load(result.path) as lm:
        assert lm.attention == (faster, None)
        reply = lm.generate("Hello", max_new_tokens=8, min_new_tokens=8)
        assert reply.completion_tokens == 8  # type: ignore[union-attr]


def test_paged_attention_falls_back_to_stateful_with_a_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A paged config this OpenVINO cannot rewrite (the rewrite made to fail here) loads the
    decoder stateful and says why, instead of failing the load."""
    from ai_vmm.runtime.executors import openvino_lm

    def unavailable(model: Any, layers: int) -> Any:
        raise ArtifactError(f"PagedAttention rewrote 0 attention layers of {layers}")

    monkeypatch.setattr(openvino_lm, "paged_model", unavailable)
    path = tmp_path / "paged.vmm"
    shutil.copytree(tiny_artifact("llama", "openvino:CPU+paged"), path)
    with ai_vmm.load(path) as lm:
        mode, note = lm.attention
        assert mode == "stateful" and note is not None and "rewrote 0" in note
        reply = lm.generate("Hi", max_new_tokens=4, min_new_tokens=4)
        assert reply.completion_tokens == 4  # type: ignore[union-attr]


def test_onnx_runtime_int8_packs_matmuls_and_keeps_grouped_attention(tmp_path: Path) -> None:
    """The ONNX Runtime path of ``weights="int8"``: every projection packed as
    ``MatMulNBits``, attention still reading the grouped cache, scored by the quality gate,
    and the artifact generates."""
    import onnx

    result = ai_vmm.compile(
        hf_dir("llama"),
        target="onnxruntime:CPU",
        output=tmp_path / "int8.vmm",
        tune=False,
        cache_dir=tiny_artifact("llama").parent / "cache",
        weights="int8",
    )
    candidate = result.report["candidates"][0]
    notes = " ".join(candidate["notes"])
    assert "MatMul weights in 8 bits" in notes, notes
    assert "2 attention nodes read the grouped KV cache directly" in notes
    assert candidate["quality"]["attempts"][-1]["passed"], candidate["quality"]
    entry = result.path / result.manifest["partitions"][0]["entry"]
    graph = onnx.load(str(entry), load_external_data=False).graph
    ops = [node.op_type for node in graph.node]
    assert "MatMul" not in ops and ops.count("MatMulNBits") == 2 * 7 + 1, ops
    attention = [node.input[1] for node in graph.node if node.op_type == "Attention"]
    assert attention == ["present.0.key", "present.1.key"]
    lm = ai_vmm.load(result.path)
    try:
        assert lm.generate("Hello", max_new_tokens=4, min_new_tokens=4).completion_tokens == 4
    finally:
        lm.close()


def test_onnx_runtime_int4_build_packs_in_groups(tmp_path: Path) -> None:
    """``targets.onnxruntime_lm.build`` with INT4 in groups of 32 on the tiny Llama's float
    decoder (random weights, which the gate refuses in INT4, so the build is called itself):
    every projection packed, a step's logits near the float decoder's."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from ai_vmm.targets.onnxruntime_lm import build

    source = tiny_artifact("llama", "onnxruntime:CPU") / "decoder"
    float_dir = tmp_path / "float"
    float_dir.mkdir()
    for item in source.iterdir():  # copies: a deploy test may have hard-linked the originals
        shutil.copy2(item, float_dir / item.name)
    entry, _, note = build(
        float_dir / "decoder.onnx", tmp_path / "int4", weights="int4", group_size=32
    )
    assert note is not None and "MatMul weights in 4 bits" in note and "block 32" in note
    packed = tmp_path / "int4" / entry
    ops = [n.op_type for n in onnx.load(str(packed), load_external_data=False).graph.node]
    assert "MatMul" not in ops and ops.count("MatMulNBits") == 2 * 7 + 1, ops

    def logits(path: Path) -> np.ndarray:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds: dict[str, np.ndarray] = {
            "input_ids": np.arange(3, 11, dtype=np.int64)[None],
            "attention_mask": np.ones((1, 8), np.int64),
            "position_ids": np.arange(8, dtype=np.int64)[None],
            "logit_index": np.array([7], np.int64),
        }
        for value in session.get_inputs():
            if value.name.startswith("past."):
                feeds[value.name] = np.zeros((1, 2, 0, 16), np.float32)
        out: np.ndarray = session.run(["logits"], feeds)[0].ravel()
        return out

    reference, quantized = logits(float_dir / "decoder.onnx"), logits(packed)
    cosine = reference @ quantized / (np.linalg.norm(reference) * np.linalg.norm(quantized))
    # INT4 of random 64-wide weights moves the logits (0.95 measured); a wrong packing (blocks
    # misordered or transposed) leaves them uncorrelated.
    assert cosine > 0.9, cosine

"""The artifact's tokenizer against transformers: ids, chat template, streaming decode."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from lm_support import tiny_lms

from ai_vmm.runtime.errors import ArtifactError, InputError
from ai_vmm.runtime.llm import Tokenizer

TEXTS = [
    "Return a new list containing all items from the iterable in ascending order.",
    "  leading spaces, tabs\tand\nnewlines  ",
    "unicode: café, naïve, 東京, emoji 🎉🐍 and math ∑",
]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Tokenizer, object]:
    hf = tiny_lms().tokenizer()
    root = tmp_path_factory.mktemp("tok")
    hf.backend_tokenizer.save(str(root / "tokenizer.json"))
    ours = Tokenizer(
        root / "tokenizer.json",
        chat_template=hf.chat_template,
        special_tokens={"bos_token": hf.bos_token, "eos_token": hf.eos_token},
        eos_token_ids=(hf.eos_token_id,),
    )
    return ours, hf


def test_encode_decode_match_transformers(pair: tuple[Tokenizer, object]) -> None:
    ours, hf = pair
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == hf(text)["input_ids"]  # type: ignore[operator]
        assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True)  # type: ignore[attr-defined]


def test_chat_template_matches_transformers(pair: tuple[Tokenizer, object]) -> None:
    ours, hf = pair
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Japan? 東京?"},
    ]
    expected = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)  # type: ignore[attr-defined]
    expected_ids = expected["input_ids"] if hasattr(expected, "keys") else expected
    assert ours.apply_chat_template(messages) == list(expected_ids)
    text = ours.apply_chat_template(messages, tokenize=False)
    assert isinstance(text, str) and text.endswith("<|im_start|>assistant\n")


def test_stream_decoder_pieces_add_up_to_the_text(pair: tuple[Tokenizer, object]) -> None:
    ours, _ = pair
    for text in TEXTS:
        ids = ours.encode(text)
        stream = ours.stream()
        pieces = [stream.push(t) for t in ids]
        pieces.append(stream.flush())
        assert "".join(pieces) == ours.decode(ids) == text
        # Byte-level BPE splits the emoji over several tokens: no piece shows half a character.
        assert all("\ufffd" not in piece for piece in pieces)


def test_bad_messages_and_files(pair: tuple[Tokenizer, object], tmp_path: Path) -> None:
    ours, _ = pair
    with pytest.raises(InputError, match="non-empty list"):
        ours.apply_chat_template([])
    with pytest.raises(InputError, match="'role'"):
        ours.apply_chat_template([{"content": "no role"}])
    with pytest.raises(InputError, match="string"):
        ours.encode(123)  # type: ignore[arg-type]
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ArtifactError, match="tokenizer"):
        Tokenizer(bad)
    ours._tokenizer.save(str(tmp_path / "t.json"))
    no_template = Tokenizer(tmp_path / "t.json")
    with pytest.raises(InputError, match="no chat template"):
        no_template.apply_chat_template([{"role": "user", "content": "hi"}])


def test_template_errors_are_one_line_input_errors(pair: tuple[Tokenizer, object]) -> None:
    ours, _ = pair
    strict = Tokenizer.__new__(Tokenizer)
    strict.__dict__.update(ours.__dict__)
    strict.chat_template = "{{ raise_exception('only user messages') }}"
    strict._template = None
    with pytest.raises(InputError, match="only user messages"):
        strict.apply_chat_template([{"role": "user", "content": "hi"}])


def test_runtime_tokenizer_needs_no_transformers(
    pair: tuple[Tokenizer, object], tmp_path: Path
) -> None:
    """A deployment machine has the runtime, tokenizers and jinja2: no torch, no transformers."""
    ours, _ = pair
    ours._tokenizer.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "template.jinja").write_text(ours.chat_template or "")
    code = f"""
import sys
import subprocess
import sys
from pathlib import Path
from ai_vmm.runtime.llm import Tokenizer
root = Path({str(tmp_path)!r})
tok = Tokenizer(root / "tokenizer.json", chat_template=(root / "template.jinja").read_text())
ids = tok.apply_chat_template([{{"role": "user", "content": "hi"}}])
assert ids and tok.decode(ids, skip_special_tokens=False).endswith("assistant\\n"), ids
heavy = sorted(m for m in ("torch", "transformers", "onnxscript", "nncf") if m in sys.modules)
assert not heavy, heavy
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]

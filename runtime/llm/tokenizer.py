"""The tokenizer stored in a causal-lm artifact: ``tokenizers`` for text, Jinja for chat templates.

The chat template is rendered the way ``transformers`` renders it (a sandboxed Jinja environment
with ``trim_blocks``, ``lstrip_blocks``, loop controls, ``tojson``, ``raise_exception`` and
``strftime_now``), and the rendered text is tokenized without adding special tokens again (the
template writes them), so the token ids match ``apply_chat_template(..., tokenize=True)``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from ai_vmm.runtime.errors import ArtifactError, InputError

Message = Mapping[str, Any]


class Tokenizer:
    """Encode, decode and apply the chat template of one model."""

    def __init__(
        self,
        tokenizer_file: Path,
        *,
        chat_template: str | None = None,
        special_tokens: Mapping[str, str] | None = None,
        eos_token_ids: Sequence[int] = (),
    ) -> None:
        try:
            from tokenizers import Tokenizer as RustTokenizer
        except ImportError as exc:
            raise ArtifactError(
                "causal LMs need the 'tokenizers' package: pip install 'ai-vmm[llm]'"
            ) from exc
        try:
            self._tokenizer = RustTokenizer.from_file(str(tokenizer_file))
        except Exception as exc:
            raise ArtifactError(f"cannot read the tokenizer {tokenizer_file.name}: {exc}") from exc
        self.chat_template = chat_template
        self.special_tokens = dict(special_tokens or {})
        self.eos_token_ids = tuple(eos_token_ids)
        self._template: Any = None

    @property
    def vocab_size(self) -> int:
        return int(self._tokenizer.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text`` (with the model's BOS etc. when ``add_special_tokens``)."""
        if not isinstance(text, str):
            raise InputError(f"a prompt must be a string, not {type(text).__name__}")
        return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def token_to_id(self, token: str) -> int | None:
        found = self._tokenizer.token_to_id(token)
        return None if found is None else int(found)

    def render_chat(
        self, messages: Sequence[Message], *, add_generation_prompt: bool = True, **extra: Any
    ) -> str:
        """The chat template applied to ``messages``, as text.

        Raises:
            InputError: the model has no chat template, or the messages are malformed.
        """
        if self.chat_template is None:
            raise InputError(
                "this model has no chat template: pass a plain prompt string instead of messages"
            )
        _check_messages(messages)
        template = self._compiled_template()
        try:
            return str(
                template.render(
                    messages=[dict(m) for m in messages],
                    add_generation_prompt=add_generation_prompt,
                    **self.special_tokens,
                    **extra,
                )
            )
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"the chat template failed on these messages: {exc}") from exc

    def apply_chat_template(
        self,
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool = True,
        tokenize: bool = True,
        **extra: Any,
    ) -> list[int] | str:
        """Like ``transformers``: the rendered text, or (``tokenize=True``) its token ids."""
        text = self.render_chat(messages, add_generation_prompt=add_generation_prompt, **extra)
        return self.encode(text, add_special_tokens=False) if tokenize else text

    def stream(self) -> StreamDecoder:
        """A decoder that turns tokens, one at a time, into text pieces."""
        return StreamDecoder(self)

    def _compiled_template(self) -> Any:
        if self._template is None:
            try:
                import jinja2
                from jinja2.ext import loopcontrols
                from jinja2.sandbox import ImmutableSandboxedEnvironment
            except ImportError as exc:
                raise ArtifactError(
                    "chat templates need the 'jinja2' package: pip install 'ai-vmm[llm]'"
                ) from exc

            def raise_exception(message: str) -> None:
                raise InputError(f"the chat template refused the messages: {message}")

            def tojson(
                value: Any, ensure_ascii: bool = False, indent: int | None = None, **kw: Any
            ) -> str:
                return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, **kw)

            env = ImmutableSandboxedEnvironment(
                trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
            )
            env.filters["tojson"] = tojson
            env.globals["raise_exception"] = raise_exception
            env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
            try:
                self._template = env.from_string(self.chat_template or "")
            except jinja2.TemplateError as exc:
                raise ArtifactError(f"the artifact's chat template does not parse: {exc}") from exc
        return self._template


class StreamDecoder:
    """Incremental detokenization: each new token gives the text it completes (maybe ``""``).

    Decoding a token alone loses what depends on its neighbours (a leading space of
    SentencePiece pieces, a UTF-8 character split across byte tokens), so each step decodes a
    short window that starts at the previous piece and emits only what is new; a window that
    ends inside a multi-byte character (U+FFFD at the end) waits for the next token.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0
        self.text = ""

    def push(self, token: int) -> str:
        self._ids.append(token)
        before = self._tokenizer.decode(self._ids[self._prefix : self._read])
        after = self._tokenizer.decode(self._ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            piece = after[len(before) :]
            self._prefix, self._read = self._read, len(self._ids)
            self.text += piece
            return piece
        return ""

    def flush(self) -> str:
        """What is left undecoded at the end (an incomplete character decodes as U+FFFD)."""
        before = self._tokenizer.decode(self._ids[self._prefix : self._read])
        after = self._tokenizer.decode(self._ids[self._prefix :])
        piece = after[len(before) :] if len(after) > len(before) else ""
        self._prefix = self._read = len(self._ids)
        self.text += piece
        return piece


def _check_messages(messages: Sequence[Message]) -> None:
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence) or not messages:
        raise InputError("messages must be a non-empty list of {'role': ..., 'content': ...}")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message:
            raise InputError(f"message {index} must be a dict with 'role' and 'content'")
        if not isinstance(message.get("role"), str):
            raise InputError(f"message {index}: 'role' must be a string")

"""The OpenAI-compatible API: request validation, response and stream chunk shapes, errors.

Shapes follow the OpenAI reference for ``/v1/completions`` and ``/v1/chat/completions`` so that
the ``openai`` Python client works unchanged: ``usage`` on every non-streamed answer (and on a
final chunk when ``stream_options.include_usage`` asks), server-sent events ending with
``data: [DONE]``, and errors as ``{"error": {"message", "type", "param", "code"}}``. Features
the server does not offer (``n > 1``, ``logprobs``, ``echo``, tools, non-text response formats)
are refused with 400 instead of being silently ignored; unknown fields are ignored, as
OpenAI-compatible servers do, so newer clients keep working.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ai_vmm.serve.admission import Rejected

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
    504: "timeout",
}


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0)
    n: int = 1
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = Field(default=1.0, gt=0)
    min_tokens: int = Field(default=0, ge=0)
    ignore_eos: bool = False
    logprobs: Any = None
    user: str | None = None

    def check_supported(self) -> None:
        if self.n != 1:
            raise _param_error("n", "only n = 1 is supported")
        if self.logprobs not in (None, False, 0):
            raise _param_error("logprobs", "logprobs are not supported")
        if self.presence_penalty or self.frequency_penalty:
            raise _param_error(
                "presence_penalty",
                "presence/frequency penalties are not supported; use repetition_penalty",
            )

    @property
    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        stops = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if len(stops) > 4 or not all(stops):
            raise _param_error("stop", "stop takes up to 4 non-empty strings")
        return stops

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))

    def new_tokens(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default


class CompletionRequest(_Request):
    """``POST /v1/completions``."""

    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.echo:
            raise _param_error("echo", "echo is not supported")
        if self.suffix:
            raise _param_error("suffix", "suffix is not supported")
        if self.best_of not in (None, 1):
            raise _param_error("best_of", "only best_of = 1 is supported")

    def single_prompt(self) -> str | list[int]:
        """The one prompt (a string or token ids); lists of several prompts are refused."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return prompt
        if prompt and all(isinstance(p, int) for p in prompt):
            return list(prompt)  # type: ignore[arg-type]
        if len(prompt) == 1:
            only = prompt[0]
            return only if isinstance(only, str) else list(only)  # type: ignore[arg-type]
        raise _param_error("prompt", "send one prompt per request")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        parts = []
        for part in self.content:
            if part.get("type") != "text":
                raise _param_error("messages", "only text content parts are supported")
            parts.append(str(part.get("text", "")))
        return "".join(parts)


class ChatRequest(_Request):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.tools:
            raise _param_error("tools", "tools are not supported")
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            raise _param_error("response_format", "only text responses are supported")

    def plain_messages(self) -> list[dict[str, str]]:
        return [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in self.messages
        ]


def parse(kind: type[_Request], body: bytes) -> Any:
    """Validate a request body; a 400 in OpenAI's shape names the first bad parameter."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Rejected(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Rejected(400, "invalid_json", "the body must be a JSON object")
    try:
        request = kind.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"])
        raise _param_error(param, f"{param}: {first['msg']}") from None
    request.check_supported()
    return request


def _param_error(param: str, message: str) -> Rejected:
    return Rejected(400, "invalid_value", message, param=param)


def error_body(error: Rejected) -> dict[str, Any]:
    return {
        "error": {
            "message": error.message,
            "type": _ERROR_TYPES.get(error.status, "server_error"),
            "param": error.param,
            "code": error.code,
        }
    }


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(
    rid: str, model: str, text: str, finish: str | None, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chat_completion(
    rid: str, model: str, text: str, finish: str | None, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def completion_chunk(
    rid: str, model: str, created: int, text: str, finish: str | None
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
    }


def chat_chunk(
    rid: str, model: str, created: int, delta: dict[str, Any], finish: str | None
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def usage_chunk(
    rid: str, model: str, created: int, obj: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event: ``data: <json>`` and a blank line."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


DONE = sse("[DONE]")


def model_card(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "ai-vmm"}


__all__ = [
    "DONE",
    "ChatRequest",
    "CompletionRequest",
    "chat_chunk",
    "chat_completion",
    "completion",
    "completion_chunk",
    "error_body",
    "model_card",
    "new_id",
    "parse",
    "sse",
    "usage_chunk",
]

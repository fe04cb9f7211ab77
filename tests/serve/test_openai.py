"""The ``openai`` Python client (nobody here wrote it) against the server, on causal LMs.

Completions, chat and streams (with ``usage``) must give exactly what ``VMM().deploy`` of the
same model gives when called directly (greedy decoding); streams end with ``data: [DONE]``;
errors come back in OpenAI's shape as the client's own exception classes; concurrent streams
share the engine's decode steps and still give each request its own greedy reply.

The default run serves a tiny random-weight Llama (``models/tiny_lms.py``: a real tokenizer
and chat template, compiled by the real LM compile path); the heavy run serves the real
SmolLM2-135M-Instruct GGUF (its deploy compiles and measures it: many minutes the first time,
then the deployment store has it).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import KEYS, LiveServer, make_repo, real_model

from ai_vmm import VMM
from ai_vmm.serve import create_app, hash_key

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(
    scope="module", params=["tiny-llama", pytest.param("smollm2", marks=pytest.mark.heavy)]
)
def lm_source(request: pytest.FixtureRequest) -> Path:
    if request.param == "smollm2":
        return real_model("SmolLM2-135M-Instruct.Q4_1.gguf")
    from lm_support import tiny_artifact

    return tiny_artifact("llama", "onnxruntime:CPU")


@pytest.fixture(scope="module")
def direct(lm_source: Path) -> Any:
    """The LM deployed directly, as a user would (the server deploys it the same way)."""
    deployment = VMM().deploy(lm_source)
    yield deployment
    deployment.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, lm_source: Path, cnn_artifact: Path) -> Any:
    config = f"""
[models.llm]
generation = {{ max_batch = 8, max_tokens_limit = 512 }}

[[tenants]]
name = "alice"
key_sha256 = "{hash_key(KEYS["alice"])}"

[[tenants]]
name = "bob"
key_sha256 = "{hash_key(KEYS["bob"])}"
models = ["cnn"]
"""
    repo = make_repo(
        tmp_path_factory.mktemp("openai") / "repo", {"llm": lm_source, "cnn": cnn_artifact}, config
    )
    with LiveServer(create_app(repo), ready_timeout=3600) as live:
        yield live


def _client(server: Any, who: str = "alice") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEYS[who], max_retries=0)


def test_completions_chat_and_streams_equal_deploy(
    server: Any, direct: Any, lm_source: Path
) -> None:
    client = _client(server)
    assert [m.id for m in client.models.list()] == ["llm"]
    assert client.models.retrieve("llm").id == "llm"

    prompt = "The three primary colours are"
    want = direct.generate(prompt, max_new_tokens=16)
    got = client.completions.create(model="llm", prompt=prompt, max_tokens=16, temperature=0)
    assert got.choices[0].text == want.text
    assert got.choices[0].finish_reason == want.finish_reason
    assert got.usage is not None
    assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (
        want.prompt_tokens,
        want.completion_tokens,
    )

    want = direct.generate(QUESTION, max_new_tokens=32)
    if lm_source.suffix == ".gguf":  # the real SmolLM2 answers the question
        assert want.text == "The capital of France is Paris."
    chat = client.chat.completions.create(
        model="llm", messages=QUESTION, max_tokens=32, temperature=0
    )
    assert chat.choices[0].message.content == want.text
    assert chat.choices[0].message.role == "assistant"
    assert chat.usage is not None and chat.usage.total_tokens == want.prompt_tokens + len(
        want.tokens
    )

    pieces, finish, usage = [], None, None
    for chunk in client.chat.completions.create(
        model="llm", messages=QUESTION, max_tokens=32, temperature=0, stream=True,
        stream_options={"include_usage": True},
    ):  # fmt: skip
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == want.text
    assert finish == want.finish_reason
    assert usage is not None and usage.completion_tokens == want.completion_tokens

    text = "".join(
        chunk.choices[0].text
        for chunk in client.completions.create(
            model="llm", prompt=prompt, max_tokens=16, temperature=0, stream=True
        )
    )
    assert text == direct.generate(prompt, max_new_tokens=16).text


def test_stream_ends_with_done(server: Any) -> None:
    body = {"model": "llm", "messages": QUESTION, "max_tokens": 4, "stream": True}
    headers = {"Authorization": f"Bearer {KEYS['alice']}"}
    with httpx.stream(
        "POST", f"{server.url}/v1/chat/completions", json=body, headers=headers, timeout=120
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    first = json.loads(events[0].removeprefix("data: "))
    assert first["object"] == "chat.completion.chunk"
    assert first["choices"][0]["delta"]["role"] == "assistant"


def test_errors_have_openai_shape(server: Any) -> None:
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-nope", max_retries=0).models.list()
    with pytest.raises(openai.PermissionDeniedError) as denied:
        _client(server, "bob").chat.completions.create(model="llm", messages=QUESTION)
    assert "may not use model 'llm'" in denied.value.message
    client = _client(server)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="llm", messages=QUESTION, n=2)
    assert bad.value.body["param"] == "n"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError, match="limit"):
        client.completions.create(model="llm", prompt="x", max_tokens=100_000)
    with pytest.raises(openai.BadRequestError, match="not a language model"):
        client.completions.create(model="cnn", prompt="x")
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="llm", messages=[])


def test_concurrent_streams_share_decode_steps(server: Any, direct: Any) -> None:
    prompts = [
        [{"role": "user", "content": f"Name one {thing}."}]
        for thing in ("fruit", "colour", "planet", "river", "tree", "metal", "bird", "city")
    ]
    wanted = [direct.generate(p, max_new_tokens=24).text for p in prompts]

    def engine_steps() -> int:
        index = httpx.post(
            f"{server.url}/v2/repository/index",
            headers={"Authorization": f"Bearer {KEYS['alice']}"},
        ).json()
        (lm,) = [m for m in index if m["name"] == "llm"]
        return int(lm["engine"]["decode_steps"])

    async def run_all() -> tuple[list[str], int]:
        client = openai.AsyncOpenAI(
            base_url=f"{server.url}/v1", api_key=KEYS["alice"], max_retries=0
        )

        async def one(messages: list[dict[str, str]]) -> tuple[str, int]:
            parts, tokens = [], 0
            stream = await client.chat.completions.create(
                model="llm", messages=messages, max_tokens=24, temperature=0, stream=True,
                stream_options={"include_usage": True},
            )  # fmt: skip
            async for chunk in stream:
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
                parts.extend(c.delta.content or "" for c in chunk.choices)
            return "".join(parts), tokens

        results = await asyncio.gather(*(one(p) for p in prompts))
        await client.close()
        return [text for text, _ in results], sum(tokens for _, tokens in results)

    before = engine_steps()
    texts, tokens = asyncio.run(run_all())
    steps = engine_steps() - before
    assert texts == wanted  # batched decoding changes nobody's greedy reply
    assert steps < tokens  # sequences shared decode steps (8 in a row would need one per token)

"""An OpenAI-style completions API over per-adapter models (LoRA-like), one file each.

Run it with `router.model_id_from: json_body` (or `both`): the router routes on the body's
`"model"` field, as vLLM's production-stack router, llm-d or LiteLLM do, and the deployment
reads the same id with `get_multiplexed_model_id()`.

Each adapter (`adapter-01` ... `adapter-08`, init kwarg `num_adapters`) is a JSON file in
`model_dir` holding a small vocabulary and a seed: loading one reads and parses the file, as a
real adapter load reads its weights. Its "generation" is deterministic: the same prompt gives
the same tokens. The files are written the first time a replica starts.

    POST /v1/completions       {"model", "prompt", "max_tokens"?, "stream"?}
    POST /v1/chat/completions  {"model", "messages": [{"role", "content"}], ...}
    GET  /v1/models            the adapters this deployment can serve

With `"stream": true` the answer is server-sent events, one `data: {...}` chunk per token and
`data: [DONE]` at the end, each flushed as it is made (`token_interval_s` apart). Errors are
OpenAI-shaped JSON: `{"error": {"message", "type", "code"}}`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from replica import get_multiplexed_model_id, multiplexed

__all__ = ["Adapter", "Adapters", "adapter_ids", "ensure_adapters"]

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_WORDS = (
    "the",
    "model",
    "answers",
    "every",
    "request",
    "from",
    "the",
    "replica",
    "that",
    "already",
    "holds",
    "it",
    "and",
    "loads",
    "rarely",
    "so",
    "tails",
    "stay",
    "short",
    "while",
    "caches",
    "hold",
    "the",
    "popular",
    "adapters",
    "close",
)


def adapter_ids(count: int) -> list[str]:
    return [f"adapter-{n:02d}" for n in range(1, count + 1)]


def ensure_adapters(model_dir: str | os.PathLike[str], count: int) -> Path:
    """Write any missing adapter file (atomically, so replicas starting together are safe)."""
    directory = Path(model_dir)
    directory.mkdir(parents=True, exist_ok=True)
    for adapter_id in adapter_ids(count):
        path = directory / f"{adapter_id}.json"
        if path.exists():
            continue
        seed = int.from_bytes(hashlib.sha256(adapter_id.encode()).digest()[:4], "big")
        words = random.Random(seed).sample(_WORDS, k=12)
        document = json.dumps({"id": adapter_id, "seed": seed, "vocabulary": words}).encode()
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=".adapter-")
        with os.fdopen(handle, "wb") as out:
            out.write(document)
        os.replace(temporary, path)
    return directory


class Adapter:
    def __init__(self, adapter_id: str, seed: int, vocabulary: list[str]) -> None:
        self.adapter_id = adapter_id
        self.seed = seed
        self.vocabulary = vocabulary

    def tokens(self, prompt: str, count: int) -> list[str]:
        rng = random.Random(f"{self.seed}/{prompt}")
        return [f" {rng.choice(self.vocabulary)}" for _ in range(count)]


_STATUS: dict[int, type[web.HTTPException]] = {
    400: web.HTTPBadRequest,
    404: web.HTTPNotFound,
}


def _error(status: int, message: str, code: str) -> web.HTTPException:
    body = json.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "code": code}}
    )
    return _STATUS[status](text=body, content_type="application/json")


class Adapters:
    """The deployment: `examples.adapters:Adapters`."""

    def __init__(
        self,
        model_dir: str = "examples/adapters",
        num_adapters: int = 8,
        token_interval_s: float = 0.02,
    ) -> None:
        self.model_dir = ensure_adapters(model_dir, num_adapters)
        self.token_interval_s = token_interval_s

    @multiplexed(max_num_models_per_replica=3)
    async def load_model(self, model_id: str) -> Adapter:
        if not _ID.fullmatch(model_id):
            raise _error(400, f"invalid model id {model_id!r}", "invalid_model")
        path = self.model_dir / f"{model_id}.json"
        try:
            document = json.loads(await asyncio.to_thread(path.read_bytes))
        except FileNotFoundError:
            raise _error(404, f"the model {model_id!r} does not exist", "model_not_found") from None
        return Adapter(model_id, int(document["seed"]), list(document["vocabulary"]))

    async def __call__(self, request: web.Request) -> web.StreamResponse | dict[str, Any]:
        if request.path == "/v1/models":
            ids = sorted(p.stem for p in self.model_dir.glob("*.json"))
            return {"object": "list", "data": [{"id": i, "object": "model"} for i in ids]}
        if request.method != "POST" or request.path not in (
            "/v1/completions",
            "/v1/chat/completions",
        ):
            raise _error(404, f"no such endpoint: {request.method} {request.path}", "not_found")
        try:
            body = await request.json()
        except ValueError:
            raise _error(400, "the body must be JSON", "invalid_json") from None
        chat = request.path.endswith("chat/completions")
        prompt = _prompt(body, chat=chat)
        max_tokens = body.get("max_tokens", 16)
        if not isinstance(max_tokens, int) or not 1 <= max_tokens <= 4096:
            raise _error(400, "max_tokens must be an integer from 1 to 4096", "invalid_value")
        model_id = get_multiplexed_model_id()
        adapter = await self.load_model(model_id)
        tokens = adapter.tokens(prompt, max_tokens)
        if body.get("stream") is True:
            return await self._stream(request, model_id, tokens, chat=chat)
        text = "".join(tokens)
        created = int(time.time())
        if chat:
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}}
        else:
            choice = {"index": 0, "text": text}
        return {
            "id": f"cmpl-{created}",
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": model_id,
            "choices": [{**choice, "finish_reason": "length"}],
            "usage": {"completion_tokens": len(tokens)},
        }

    async def _stream(
        self, request: web.Request, model_id: str, tokens: list[str], *, chat: bool
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for token in tokens:
            delta = {"delta": {"content": token}} if chat else {"text": token}
            chunk = {"model": model_id, "choices": [{"index": 0, **delta}]}
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            await asyncio.sleep(self.token_interval_s)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _prompt(body: Any, *, chat: bool) -> str:
    if not isinstance(body, dict):
        raise _error(400, "the body must be a JSON object", "invalid_json")
    if not chat:
        prompt = body.get("prompt", "")
        if not isinstance(prompt, str):
            raise _error(400, "prompt must be a string", "invalid_value")
        return prompt
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages
    ):
        raise _error(400, "messages must be a list of {role, content}", "invalid_value")
    return "\n".join(m["content"] for m in messages)

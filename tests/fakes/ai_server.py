"""A local aiohttp server that speaks the Anthropic Messages API and the OpenAI Chat
Completions and Images APIs, as the SDKs see them (../shared/reference/
ai-provider-wire-format.md), so the real ``anthropic`` and ``openai`` clients can be
pointed at it with ``base_url``.

It checks what it is sent as the real APIs would (required headers and fields, the
structured-output schema shape, each image model's sizes and options) and answers 400 to
anything else, recording the problem in :attr:`FakeAI.problems`. Each test scripts its
answers per endpoint (``fake.script("messages", Reply.status(529), Reply.good())``); an
endpoint with nothing scripted answers with a good reply whose JSON is built from the
schema in the request. Every call is recorded for counting, with the ledger id alchemy
sends in ``X-Alchemy-Call`` (:meth:`FakeAI.call_ids`); ``delay`` makes every reply that
is not scripted otherwise take that long, and ``on_call`` runs (awaited) before a reply is
sent, for tests that break something at that moment.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from tests.fakes.wire import check_chat, check_image, check_messages, schema_instance

ENDPOINTS: Final = ("messages", "chat", "images")
CALL_HEADER: Final = "X-Alchemy-Call"
_ids = itertools.count(1)


def png_bytes(
    width: int = 8, height: int = 8, colour: tuple[int, int, int] = (10, 120, 200)
) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format="PNG")
    return out.getvalue()


@dataclass(frozen=True)
class Reply:
    """One scripted answer."""

    kind: str  # good | text | refusal | status | slow | image_b64 | image_url | no_image
    payload: Any = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    stop_reason: str = ""

    @staticmethod
    def good(payload: Any = None) -> Reply:
        return Reply("good", payload)

    @staticmethod
    def text(raw: str, stop_reason: str = "") -> Reply:
        return Reply("text", raw, stop_reason=stop_reason)

    @staticmethod
    def refusal(explanation: str = "I can't help with that.") -> Reply:
        return Reply("refusal", explanation)

    @staticmethod
    def error(
        status: int,
        error_type: str,
        message: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        body = {"type": error_type, "message": message, "code": code}
        return Reply("status", body, status=status, headers=headers or {})

    @staticmethod
    def spend_limit(provider: str) -> Reply:
        """The provider's refusal when the account's own spend limit is reached: OpenAI's
        429 ``insufficient_quota`` (type and code, per the wire-format reference), and
        Anthropic's 400 for a workspace's usage limit (the wording its users report)."""
        if provider == "openai":
            message = "You exceeded your current quota, please check your plan and billing."
            return Reply.error(429, "insufficient_quota", message, code="insufficient_quota")
        message = (
            "You have reached your specified workspace API usage limits."
            " You will regain access on 2026-12-01 at 00:00 UTC."
        )
        return Reply.error(400, "invalid_request_error", message)

    @staticmethod
    def raw(body: Any, status: int = 200) -> Reply:
        """Exactly this JSON body, e.g. one that drifted from the real schema."""
        return Reply("raw", body, status=status)

    @staticmethod
    def slow(seconds: float, then: Reply | None = None) -> Reply:
        return Reply("slow", then or Reply.good(), delay=seconds)

    @staticmethod
    def image_b64(data: bytes | None = None) -> Reply:
        return Reply("image_b64", data)

    @staticmethod
    def image_url(data: bytes | None = None, *, url: str | None = None) -> Reply:
        return Reply("image_url", data, headers={"url": url} if url else {})


@dataclass
class Call:
    endpoint: str
    headers: dict[str, str]
    body: Any
    at: float


class FakeAI:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.problems: list[str] = []
        self.downloads = 0
        self._scripts: dict[str, deque[Reply]] = {name: deque() for name in ENDPOINTS}
        self._files: dict[str, bytes] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.delay = 0.0  # seconds before every reply (on top of a scripted slow one)
        self.on_call: Callable[[Call], Awaitable[None]] | None = None
        # Usage reported by good text replies (None: 100 input tokens, and a quarter of the
        # reply's characters as output tokens from Anthropic, 50 from OpenAI), and what every
        # good text reply reported.
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.billed: list[tuple[str, int, int]] = []  # (model, input tokens, output tokens)

    # -- scripting and inspection ------------------------------------------------------
    def script(self, endpoint: str, *replies: Reply) -> None:
        self._scripts[endpoint].extend(replies)

    def count(self, endpoint: str) -> int:
        return sum(1 for call in self.calls if call.endpoint == endpoint)

    def bodies(self, endpoint: str) -> list[Any]:
        return [call.body for call in self.calls if call.endpoint == endpoint]

    def call_ids(self, endpoint: str | None = None) -> list[str]:
        """The ``X-Alchemy-Call`` header of each call (the ledger row's id), in order."""
        return [
            next((v for k, v in call.headers.items() if k.lower() == CALL_HEADER.lower()), "")
            for call in self.calls
            if endpoint is None or call.endpoint == endpoint
        ]

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def anthropic_base_url(self) -> str:
        return self.origin  # the Anthropic SDK adds /v1 itself

    @property
    def openai_base_url(self) -> str:
        return f"{self.origin}/v1"  # the OpenAI SDK does not

    def serve_file(self, name: str, data: bytes) -> str:
        self._files[name] = data
        return f"{self.origin}/files/{name}"

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/images/generations", self._images)
        app.router.add_get("/files/{name}", self._file)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- endpoints -----------------------------------------------------------------------
    async def _record(self, endpoint: str, request: web.Request) -> tuple[Any, Reply]:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = None
        call = Call(endpoint, dict(request.headers), body, time.monotonic())
        self.calls.append(call)
        script = self._scripts[endpoint]
        reply = script.popleft() if script else Reply.good()
        if self.delay:
            await asyncio.sleep(self.delay)
        if reply.kind == "slow":
            await asyncio.sleep(reply.delay)
            reply = reply.payload
        if self.on_call is not None:
            await self.on_call(call)
        return body, reply

    def _invalid(self, flavour: str, problem: str) -> web.Response:
        self.problems.append(problem)
        return _error(
            flavour, 400, {"type": "invalid_request_error", "message": f"fake: {problem}"}
        )

    async def _messages(self, request: web.Request) -> web.Response:
        body, reply = await self._record("messages", request)
        problem = check_messages(request.headers, body)
        if problem:
            return self._invalid("anthropic", problem)
        if reply.kind in ("status", "raw"):
            return _scripted(reply, "anthropic")
        text, stop, details = self._reply_text(reply, body["output_config"]["format"]["schema"])
        message: dict[str, Any] = {
            "id": f"msg_fake{next(_ids):06d}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [{"type": "text", "text": text}] if text else [],
            "stop_reason": reply.stop_reason or stop,
            "stop_sequence": None,
            "usage": self._usage(body["model"], text),
        }
        if details:
            message["stop_details"] = {"type": "refusal", "category": None, "explanation": details}
        return web.json_response(message, headers={"request-id": f"req_fake{next(_ids)}"})

    async def _chat(self, request: web.Request) -> web.Response:
        body, reply = await self._record("chat", request)
        problem = check_chat(request.headers, body)
        if problem:
            return self._invalid("openai", problem)
        if reply.kind in ("status", "raw"):
            return _scripted(reply, "openai")
        schema = body["response_format"]["json_schema"]["schema"]
        text, stop, refusal = self._reply_text(reply, schema)
        finish = {"end_turn": "stop", "refusal": "stop", "max_tokens": "length"}[stop]
        completion = {
            "id": f"chatcmpl-fake{next(_ids):06d}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "finish_reason": reply.stop_reason or finish,
                    "logprobs": None,
                    "message": {
                        "role": "assistant",
                        "content": None if refusal else text,
                        "refusal": refusal,
                    },
                }
            ],
            "usage": self._chat_usage(body["model"]),
        }
        return web.json_response(completion, headers={"x-request-id": f"req_{next(_ids)}"})

    def _reply_text(self, reply: Reply, schema: dict[str, Any]) -> tuple[str, str, str | None]:
        """(text, anthropic stop reason, refusal explanation) for a scripted reply."""
        if reply.kind == "refusal":
            return "", "refusal", str(reply.payload)
        if reply.kind == "text":
            return str(reply.payload), "end_turn", None
        value = reply.payload if reply.payload is not None else schema_instance(schema)
        return json.dumps(value), "end_turn", None

    def _chat_usage(self, model: str) -> dict[str, int]:
        """OpenAI's usage: 100 and 50 tokens unless the test set its own figures."""
        prompt = 100 if self.input_tokens is None else self.input_tokens
        completion = self.output_tokens or 50
        self.billed.append((model, prompt, completion))
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def _usage(self, model: str, text: str) -> dict[str, int]:
        usage = {
            "input_tokens": 100 if self.input_tokens is None else self.input_tokens,
            "output_tokens": self.output_tokens or max(1, len(text) // 4),
        }
        self.billed.append((model, usage["input_tokens"], usage["output_tokens"]))
        return usage

    async def _images(self, request: web.Request) -> web.Response:
        body, reply = await self._record("images", request)
        problem = check_image(request.headers, body)
        if problem:
            return self._invalid("openai", problem)
        if reply.kind in ("status", "raw"):
            return _scripted(reply, "openai")
        model = body["model"]
        legacy = model.startswith("dall-e")
        data = reply.payload if isinstance(reply.payload, bytes) else png_bytes()
        if reply.kind == "no_image":
            return web.json_response({"created": int(time.time()), "data": []})
        if reply.kind == "image_url" or (legacy and reply.kind == "good"):
            name = f"img{next(_ids)}.png"
            url = reply.headers.get("url") or self.serve_file(name, data)
            item: dict[str, Any] = {"url": url}
        else:
            item = {"b64_json": base64.b64encode(data).decode()}
        response: dict[str, Any] = {"created": int(time.time()), "data": [item]}
        if legacy:
            item["revised_prompt"] = f"A revised version of: {body['prompt']}"
        else:
            response.update(
                background="opaque",
                output_format="png",
                quality="medium" if body.get("quality", "auto") == "auto" else body["quality"],
                size="1024x1024" if body.get("size", "auto") == "auto" else body["size"],
                usage={
                    "input_tokens": 50,
                    "input_tokens_details": {"text_tokens": 50, "image_tokens": 0},
                    "output_tokens": 1056,
                    "total_tokens": 1106,
                },
            )
        return web.json_response(response)

    async def _file(self, request: web.Request) -> web.Response:
        self.downloads += 1
        data = self._files.get(request.match_info["name"])
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="image/png")


def _scripted(reply: Reply, flavour: str) -> web.Response:
    if reply.kind == "raw":
        return web.json_response(reply.payload, status=reply.status)
    return _error(flavour, reply.status, reply.payload, reply.headers)


def _error(
    flavour: str, status: int, error: dict[str, Any], headers: dict[str, str] | None = None
) -> web.Response:
    if flavour == "anthropic":
        inner = {"type": error["type"], "message": error["message"]}
        body: dict[str, Any] = {"type": "error", "error": inner, "request_id": "req_fake"}
    else:
        body = {
            "error": {
                "message": error["message"],
                "type": error["type"],
                "param": None,
                "code": error.get("code"),
            }
        }
    return web.json_response(body, status=status, headers=headers or {})

"""GPT through ``openai.AsyncOpenAI``: one Chat Completions call per request, the reply
constrained by a strict ``json_schema`` response format."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import openai

from alchemy.errors import JobError
from alchemy.providers.base import (
    ContentPolicyError,
    OutputInvalidError,
    ProviderRefusedError,
    TextRequest,
    TextResult,
    Usage,
    call_headers,
    raise_failure,
)
from alchemy.providers.errors import map_provider_error
from alchemy.providers.structured import repair_prompt, strict_schema

SAMPLE_REPLY: Final[dict[str, Any]] = {
    "id": "chatcmpl-warm",
    "object": "chat.completion",
    "created": 0,
    "model": "warm",
    "choices": [
        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "{}"}}
    ],
    "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
}


class GptText:
    name = "openai"
    local = False

    def __init__(
        self, client: openai.AsyncOpenAI, *, max_tokens: int, secrets: Sequence[str] = ()
    ) -> None:
        self.client = client
        self.max_tokens = max_tokens
        self._secrets = tuple(secrets)

    def warm(self) -> None:
        """Load what the SDK would load on the first call: the resource, and the reply
        type built from a sample as the SDK builds a reply, checked and not. No request
        is sent."""
        _ = self.client.chat.completions
        openai.types.chat.ChatCompletion.construct(**SAMPLE_REPLY)
        openai.types.chat.ChatCompletion.model_validate(SAMPLE_REPLY)

    async def generate(self, request: TextRequest) -> TextResult:
        result = await self.send(request)
        raise_failure(result)
        return result

    async def send(self, request: TextRequest) -> TextResult:
        messages: list[Any] = [
            {"role": "system", "content": request.system},
            {"role": "user", "content": request.prompt},
        ]
        if request.repair is not None:
            messages.append({"role": "assistant", "content": request.repair.previous_text})
            messages.append({"role": "user", "content": repair_prompt(request.repair)})
        schema_name = request.output.__name__.lower()
        try:
            reply = await self.client.chat.completions.create(
                model=request.model,
                messages=messages,
                max_completion_tokens=request.max_tokens or self.max_tokens,
                response_format={
                    "type": "json_schema",
                    "json_schema": {
                        "name": schema_name,
                        "schema": strict_schema(request.output),
                        "strict": True,
                    },
                },
                extra_headers=call_headers(request.call_id),
            )
        except openai.OpenAIError as exc:
            raise map_provider_error(self.name, exc, self._secrets) from exc
        usage = Usage()
        if reply.usage is not None:
            usage = Usage(reply.usage.prompt_tokens, reply.usage.completion_tokens)
        request_id = getattr(reply, "_request_id", None)
        if not reply.choices:
            problem = f"openai {reply.model}: the reply had no choices"
            failure = OutputInvalidError(problem, raw_text="")
            return TextResult("", self.name, reply.model, usage, "", request_id, failure)
        choice = reply.choices[0]
        text = choice.message.content or ""
        return TextResult(
            text,
            self.name,
            reply.model,
            usage,
            choice.finish_reason,
            request_id,
            self._failure(reply.model, choice, text, request),
        )

    def _failure(self, model: str, choice: Any, text: str, request: TextRequest) -> JobError | None:
        """Why a reply cannot be used: a refusal, the content filter, a cut-off reply."""
        if choice.message.refusal:
            return ProviderRefusedError(f"openai {model} refused: {choice.message.refusal}")
        if choice.finish_reason == "content_filter":
            return ContentPolicyError(f"openai {model}: the reply was stopped by the filter")
        if choice.finish_reason == "length":
            return OutputInvalidError(
                f"openai {model}: the reply was cut off at max_completion_tokens"
                f" ({request.max_tokens or self.max_tokens}); raise providers.max_tokens",
                raw_text=text,
            )
        return None

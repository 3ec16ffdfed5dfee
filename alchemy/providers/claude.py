"""Claude through ``anthropic.AsyncAnthropic``: one Messages API call per request, the
reply constrained by ``output_config.format`` (a JSON schema)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import anthropic

from alchemy.errors import JobError
from alchemy.providers.base import (
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
    "id": "msg_warm",
    "type": "message",
    "role": "assistant",
    "model": "warm",
    "content": [{"type": "text", "text": "{}"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 0, "output_tokens": 0},
}


class ClaudeText:
    name = "anthropic"
    local = False

    def __init__(
        self, client: anthropic.AsyncAnthropic, *, max_tokens: int, secrets: Sequence[str] = ()
    ) -> None:
        self.client = client
        self.max_tokens = max_tokens
        self._secrets = tuple(secrets)

    def warm(self) -> None:
        """Load what the SDK would load on the first call: the resource, and the reply
        type built from a sample as the SDK builds a reply (the type adapters of its
        nested unions are made on first use), checked and not (strict_responses or not).
        No request is sent."""
        _ = self.client.messages
        anthropic.types.Message.construct(**SAMPLE_REPLY)
        anthropic.types.Message.model_validate(SAMPLE_REPLY)

    async def generate(self, request: TextRequest) -> TextResult:
        result = await self.send(request)
        raise_failure(result)
        return result

    async def send(self, request: TextRequest) -> TextResult:
        messages: list[Any] = [{"role": "user", "content": request.prompt}]
        if request.repair is not None:
            messages.append({"role": "assistant", "content": request.repair.previous_text})
            messages.append({"role": "user", "content": repair_prompt(request.repair)})
        try:
            reply = await self.client.messages.create(
                model=request.model,
                max_tokens=request.max_tokens or self.max_tokens,
                system=request.system,
                messages=messages,
                output_config={
                    "format": {"type": "json_schema", "schema": strict_schema(request.output)}
                },
                extra_headers=call_headers(request.call_id),
            )
        except anthropic.AnthropicError as exc:
            raise map_provider_error(self.name, exc, self._secrets) from exc
        text = "".join(block.text for block in reply.content if block.type == "text")
        stop = reply.stop_reason or ""
        failure: JobError | None = None
        if stop == "refusal":
            details = getattr(reply, "stop_details", None)
            why = getattr(details, "explanation", None) or text or "no explanation given"
            failure = ProviderRefusedError(f"anthropic {reply.model} refused: {why}"[:500])
        elif stop == "max_tokens":
            failure = OutputInvalidError(
                f"anthropic {reply.model}: the reply was cut off at max_tokens"
                f" ({request.max_tokens or self.max_tokens}); raise providers.max_tokens",
                raw_text=text,
            )
        usage = Usage(reply.usage.input_tokens, reply.usage.output_tokens)
        request_id = getattr(reply, "_request_id", None)
        return TextResult(text, self.name, reply.model, usage, stop, request_id, failure)

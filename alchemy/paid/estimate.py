"""The worst case a provider call can cost, reserved against the budgets before it is sent.

    input tokens   every byte of what is sent (system, prompt, the output schema, a repair's
                   previous text and problem) counts as a token, plus INPUT_OVERHEAD for what
                   the API adds around it: no tokenizer makes more tokens than bytes
    output tokens  the request's ``max_tokens`` (or ``[providers] max_tokens``); an image
                   model's output tokens at most IMAGE_OUTPUT_TOKENS
    images         one, at ``per_image``

A model without a price has no worst case (None): its calls are not reserved, and the
ledger records their cost as unknown (``alchemy spend`` says so).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Final

from alchemy.providers.base import ImageRequest, TextRequest
from alchemy.providers.prices import PriceTable

INPUT_OVERHEAD: Final = 500  # tokens: message framing, the structured-output instructions
IMAGE_OUTPUT_TOKENS: Final = 10_000  # the most a GPT image model's reply counts (1536px high)


def text_input_bytes(request: TextRequest) -> int:
    schema = json.dumps(request.output.model_json_schema(), ensure_ascii=False)
    parts = [request.system, request.prompt, schema]
    if request.repair is not None:
        parts += [request.repair.previous_text, request.repair.problem]
    return sum(len(part.encode("utf-8", "surrogatepass")) for part in parts)


def worst_text_cost(
    prices: PriceTable, request: TextRequest, default_max_tokens: int
) -> Decimal | None:
    input_tokens = text_input_bytes(request) + INPUT_OVERHEAD
    output_tokens = request.max_tokens or default_max_tokens
    return prices.cost(request.model, input_tokens, output_tokens, 0)


def worst_image_cost(prices: PriceTable, request: ImageRequest) -> Decimal | None:
    input_tokens = len(request.prompt.encode("utf-8", "surrogatepass")) + INPUT_OVERHEAD
    return prices.cost(request.model, input_tokens, IMAGE_OUTPUT_TOKENS, 1)

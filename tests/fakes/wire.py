"""What the real APIs accept, as the fake checks it: each ``check_*`` returns a problem
(str) or None. And :func:`schema_instance`, a plausible value for a strict JSON schema."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any, Final

ANTHROPIC_VERSION_HEADER: Final = "anthropic-version"
REMOVED_ANTHROPIC_FIELDS: Final = ("temperature", "top_p", "top_k")
GPT_IMAGE_SIZES: Final = ("1024x1024", "1536x1024", "1024x1536", "auto")
GPT_IMAGE_QUALITIES: Final = ("low", "medium", "high", "auto")
DALLE3_SIZES: Final = ("1024x1024", "1792x1024", "1024x1792")


def _auth(headers: Mapping[str, str]) -> str | None:
    bearer = headers.get("authorization", "")
    if bearer.startswith("Bearer ") and len(bearer) > 7:
        return None
    if headers.get("x-api-key"):
        return None
    return "no API key sent"


def check_strict_schema(schema: Any, path: str = "schema") -> str | None:
    """Both strict modes: every object lists all its properties as required and forbids
    others; only the plain JSON-schema subset."""
    if not isinstance(schema, dict):
        return f"{path} is not an object"
    for banned in ("minimum", "maximum", "minLength", "maxLength", "pattern", "default"):
        if banned in schema:
            return f"{path} uses {banned!r}, which strict mode does not take"
    if schema.get("type") == "object":
        props = schema.get("properties", {})
        if schema.get("additionalProperties") is not False:
            return f"{path}: additionalProperties must be false"
        if sorted(schema.get("required", [])) != sorted(props):
            return f"{path}: every property must be required"
        for name, sub in props.items():
            problem = check_strict_schema(sub, f"{path}.{name}")
            if problem:
                return problem
    if schema.get("type") == "array":
        return check_strict_schema(schema.get("items"), f"{path}[]")
    for name, sub in schema.get("$defs", {}).items():
        problem = check_strict_schema(sub, f"{path}.$defs.{name}")
        if problem:
            return problem
    return None


def check_messages(headers: Mapping[str, str], body: Any) -> str | None:
    problem = _auth(headers)
    if problem:
        return problem
    if not headers.get(ANTHROPIC_VERSION_HEADER):
        return "no anthropic-version header"
    if not isinstance(body, dict):
        return "body is not a JSON object"
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            return f"{name}: field required"
    for name in (*REMOVED_ANTHROPIC_FIELDS, "stream"):
        if name in body:
            return f"{name}: not expected here"
    if not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1:
        return "max_tokens must be a positive integer"
    messages = body["messages"]
    if not messages or messages[0].get("role") != "user":
        return "messages must start with a user turn"
    roles = [m.get("role") for m in messages]
    if any(a == b for a, b in itertools.pairwise(roles)):
        return "messages must alternate user/assistant"
    fmt = (body.get("output_config") or {}).get("format")
    if not fmt or fmt.get("type") != "json_schema":
        return "output_config.format must be a json_schema format"
    return check_strict_schema(fmt.get("schema"))


def check_chat(headers: Mapping[str, str], body: Any) -> str | None:
    problem = _auth(headers)
    if problem:
        return problem
    if not isinstance(body, dict):
        return "body is not a JSON object"
    for name in ("model", "messages"):
        if name not in body:
            return f"{name}: field required"
    fmt = body.get("response_format") or {}
    if fmt.get("type") != "json_schema":
        return "response_format must be json_schema"
    spec = fmt.get("json_schema") or {}
    if not spec.get("name") or spec.get("strict") is not True:
        return "json_schema needs a name and strict: true"
    return check_strict_schema(spec.get("schema"))


def check_image(headers: Mapping[str, str], body: Any) -> str | None:
    problem = _auth(headers)
    if problem:
        return problem
    if not isinstance(body, dict) or not body.get("prompt") or not body.get("model"):
        return "prompt and model are required"
    model = body["model"]
    if model.startswith("dall-e-3"):
        if body.get("n", 1) != 1:
            return "dall-e-3 takes n=1 only"
        if "size" in body and body["size"] not in DALLE3_SIZES:
            return f"size {body['size']} is not valid for dall-e-3"
        if "quality" in body and body["quality"] not in ("standard", "hd"):
            return f"quality {body['quality']} is not valid for dall-e-3"
        if "style" in body and body["style"] not in ("vivid", "natural"):
            return f"style {body['style']} is not valid for dall-e-3"
        return None
    for name in ("response_format", "style"):
        if name in body:
            return f"{name} is not supported for GPT image models"
    if "size" in body and body["size"] not in GPT_IMAGE_SIZES:
        return f"size {body['size']} is not valid for {model}"
    if "quality" in body and body["quality"] not in GPT_IMAGE_QUALITIES:
        return f"quality {body['quality']} is not valid for {model}"
    return None


def schema_instance(schema: dict[str, Any], defs: dict[str, Any] | None = None) -> Any:
    defs = defs if defs is not None else schema.get("$defs", {})
    if "$ref" in schema:
        return schema_instance(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    if "enum" in schema:
        return schema["enum"][0]
    if "anyOf" in schema:
        return schema_instance(schema["anyOf"][0], defs)
    kind = schema.get("type")
    if kind == "object":
        return {k: schema_instance(v, defs) for k, v in schema.get("properties", {}).items()}
    if kind == "array":
        return [schema_instance(schema.get("items", {"type": "string"}), defs) for _ in range(2)]
    if kind == "integer":
        return 50
    if kind == "number":
        return 50.0
    if kind == "boolean":
        return True
    return "fake text"

"""Output parsing, the strict schema, the offline provider, provider choice, the download
allow-list and the ``[providers]`` / ``[media]`` configuration, on fixed inputs."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from alchemy.config import load_config, parse_config
from alchemy.content.schemas import RESEARCH_MODELS, ContentDraft
from alchemy.errors import ConfigError, PermanentError
from alchemy.providers.base import ImageRequest
from alchemy.providers.download import is_allowed
from alchemy.providers.errors import retry_after_seconds
from alchemy.providers.offline import MARK, OfflineImages, OfflineText
from alchemy.providers.registry import Providers, choose_text
from alchemy.providers.structured import parse_output, strict_schema
from tests.fakes.wire import check_strict_schema
from tests.providers.support import GOOD, Pitch, request


def test_parse_output_accepts_json_and_fenced_json() -> None:
    assert parse_output(Pitch, json.dumps(GOOD)) == Pitch(**GOOD)
    assert parse_output(Pitch, f"\n```json\n{json.dumps(GOOD)}\n```\n") == Pitch(**GOOD)
    assert parse_output(Pitch, f"```\n{json.dumps(GOOD)}\n```") == Pitch(**GOOD)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{", "not valid JSON"),
        ("[]", "(top): Input should be a valid dictionary"),
        ('{"headline": "h", "score": 101, "tags": []}', "score: Input should be less than"),
        ('{"headline": "", "score": 1, "tags": []}', "headline: String should have at least"),
        ('{"headline": "h", "score": 1}', "tags: Field required"),
    ],
)
def test_parse_output_says_what_is_wrong(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=re.escape(words)):
        parse_output(Pitch, text)


def test_extra_fields_are_refused() -> None:
    draft = {k: "x" for k in ContentDraft.model_fields} | {"hashtags": [], "surprise": 1}
    with pytest.raises(ValueError, match="surprise: Extra inputs are not permitted"):
        parse_output(ContentDraft, json.dumps(draft))


@pytest.mark.parametrize("model", [ContentDraft, Pitch, *RESEARCH_MODELS.values()])
def test_strict_schema_is_what_both_strict_modes_take(model: Any) -> None:
    schema = strict_schema(model)
    assert check_strict_schema(schema) is None
    assert "title" not in schema


def test_strict_schema_keeps_bounds_in_the_description() -> None:
    props = strict_schema(Pitch)["properties"]
    assert props["score"] == {"type": "integer", "description": "{maximum: 100, minimum: 0}"}
    assert props["headline"]["description"] == "a short headline {minLength: 1}"


async def test_offline_text_is_deterministic_marked_and_valid() -> None:
    offline = OfflineText()
    first = await offline.generate(request("offline-1", output=ContentDraft))
    again = await offline.generate(request("offline-1", output=ContentDraft))
    assert first.text == again.text
    draft = parse_output(ContentDraft, first.text)
    assert draft.body.startswith(MARK)
    assert "heat pumps" in draft.body
    assert draft.title.startswith(MARK)
    for model in RESEARCH_MODELS.values():
        result = await offline.generate(request("offline-1", output=model))
        parse_output(model, result.text)  # in range for every bounded field


async def test_offline_images_are_png_placeholders() -> None:
    result = await OfflineImages().generate(ImageRequest("a cat", "gpt-image-1.5", size="auto"))
    assert result.data.startswith(b"\x89PNG")
    assert (result.size, result.provider) == ("1024x1024", "offline")


CFG = parse_config({}).providers


@pytest.mark.parametrize(
    ("levels", "expected"),
    [
        ([], ("offline", "offline-1", "config")),
        (
            [("job", {}), ("row", {}), ("brand", {"provider": "openai"})],
            ("openai", "gpt-5.5", "brand"),
        ),
        (
            [("job", {"model": "claude-opus-5"}), ("row", {"provider": "openai"})],
            ("anthropic", "claude-opus-5", "job"),
        ),
        (
            [("job", {}), ("row", {"provider": "anthropic", "model": "claude-haiku-5-5"})],
            ("anthropic", "claude-haiku-5-5", "row"),
        ),
        ([("row", {"model": "gpt-5.4-mini"})], ("openai", "gpt-5.4-mini", "row")),
    ],
)
def test_choose_text(
    levels: list[tuple[str, dict[str, str]]], expected: tuple[str, str, str]
) -> None:
    choice = choose_text(levels, CFG)
    assert (choice.provider, choice.model, choice.source) == expected


def test_choose_text_refuses_what_it_cannot_place() -> None:
    with pytest.raises(PermanentError, match="cannot tell the provider of model 'llama-3'"):
        choose_text([("row", {"model": "llama-3"})], CFG)
    with pytest.raises(PermanentError, match="unknown text provider 'bard'"):
        choose_text([("brand", {"provider": "bard"})], CFG)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://oaidalleapiprodscus.blob.core.windows.net/private/x.png", True),
        ("https://OAIDALLEAPIPRODSCUS.blob.core.windows.net:443/x.png", True),
        ("http://oaidalleapiprodscus.blob.core.windows.net/x.png", False),  # https only
        ("https://oaidalleapiprodscus.blob.core.windows.net:8443/x.png", False),
        ("https://evil.example/x.png", False),
        ("https://oaidalleapiprodscus.blob.core.windows.net.evil.example/x.png", False),
        ("http://127.0.0.1:8080/files/a.png", True),
        ("http://127.0.0.1:8081/files/a.png", False),
        ("http://169.254.169.254/latest/meta-data", False),
        ("file:///etc/passwd", False),
        ("not a url", False),
    ],
)
def test_download_allow_list(url: str, allowed: bool) -> None:
    hosts = ["oaidalleapiprodscus.blob.core.windows.net", "http://127.0.0.1:8080"]
    assert is_allowed(url, hosts) is allowed


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "12"}, 12.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # a date in the past
        ({"retry-after": "soon"}, None),
        ({"retry-after": "999999"}, 3600.0),
        ({}, None),
    ],
)
def test_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_seconds(headers) == expected


def test_defaults_are_auto_offline_without_keys_and_current_models() -> None:
    cfg = parse_config({}).providers
    assert (cfg.text_provider, cfg.image_provider) == ("auto", "auto")
    assert (cfg.text, cfg.image, cfg.offline_uses) == ("offline", "offline", ("text", "image"))
    assert not cfg.forbid_offline
    assert cfg.anthropic_model == "claude-sonnet-5-5"
    assert cfg.image_model == "gpt-image-1.5"
    assert cfg.max_retries == 0


@pytest.mark.parametrize(
    ("providers", "key", "words"),
    [
        ({"text_provider": "anthropic"}, "providers.anthropic_api_key", "ANTHROPIC_API_KEY"),
        ({"text_provider": "openai"}, "providers.openai_api_key", "OPENAI_API_KEY"),
        ({"image_provider": "openai"}, "providers.openai_api_key", "image_provider"),
        ({"text_provider": "gemini"}, "providers.text_provider", "one of"),
        ({"anthropic_base_url": "http://x/v1"}, "providers.anthropic_base_url", "leave /v1 off"),
        ({"openai_base_url": "http://x"}, "providers.openai_base_url", "must end in /v1"),
        ({"image_size": "1792x1024"}, "providers.image_size", "not valid for gpt-image-1.5"),
        ({"image_quality": "hd"}, "providers.image_quality", "low, medium, high, auto"),
        ({"image_style": "vivid"}, "providers.image_style", "takes no style"),
        (
            {"image_model": "dall-e-3", "image_size": "1536x1024"},
            "providers.image_size",
            "1024x1024, 1792x1024, 1024x1792",
        ),
        ({"max_retries": 5}, "providers.max_retries", "<= 3"),
    ],
)
def test_bad_provider_settings_name_their_key(
    providers: dict[str, Any], key: str, words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"providers": providers})
    assert caught.value.key == key
    assert words in str(caught.value)


@pytest.mark.parametrize(
    ("env", "text", "image"),
    [
        ({}, "offline", "offline"),
        ({"ANTHROPIC_API_KEY": "sk-ant-x"}, "anthropic", "offline"),
        ({"OPENAI_API_KEY": "sk-o-x"}, "openai", "openai"),
        ({"ANTHROPIC_API_KEY": "sk-ant-x", "OPENAI_API_KEY": "sk-o-x"}, "anthropic", "openai"),
        (
            {"ANTHROPIC_API_KEY": "a", "OPENAI_API_KEY": "o", "ALCHEMY_TEXT_PROVIDER": "openai"},
            "openai",
            "openai",
        ),
        (
            {"OPENAI_API_KEY": "o", "ALCHEMY_IMAGE_PROVIDER": "offline"},
            "openai",
            "offline",
        ),
    ],
)
def test_auto_picks_the_provider_whose_key_is_set(
    env: dict[str, str], text: str, image: str
) -> None:
    cfg = load_config(None, env).providers
    assert (cfg.text, cfg.image) == (text, image)


@pytest.mark.parametrize(
    ("value", "expected"), [("1", True), ("true", True), ("off", False), ("0", False)]
)
def test_forbid_offline_from_the_environment(value: str, expected: bool) -> None:
    env = {"ALCHEMY_FORBID_OFFLINE": value}
    assert load_config(None, env).providers.forbid_offline is expected


def test_forbid_offline_env_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"ALCHEMY_FORBID_OFFLINE": "maybe"})
    assert caught.value.key == "providers.forbid_offline"


def test_the_guard_refuses_offline_whoever_names_it() -> None:
    config = parse_config(
        {"providers": {"anthropic_api_key": "sk-ant-x", "forbid_offline": True}},
    )
    providers = Providers(config.providers, config.media)
    with pytest.raises(PermanentError, match="forbid_offline"):
        providers.text("offline")
    with pytest.raises(PermanentError, match="forbid_offline"):
        providers.images()  # auto without an OpenAI key: offline


def test_a_real_provider_with_its_key_is_fine() -> None:
    config = parse_config(
        {"providers": {"text_provider": "anthropic", "anthropic_api_key": "sk-ant-x"}}
    )
    assert config.providers.text_provider == "anthropic"
    dalle = parse_config({"providers": {"image_model": "dall-e-3", "image_quality": "hd"}})
    assert dalle.providers.image_quality == "hd"


@pytest.mark.parametrize(
    ("media", "key"),
    [
        ({"allowed_hosts": "example.com"}, "media.allowed_hosts"),
        ({"allowed_hosts": ["ftp://x"]}, "media.allowed_hosts"),
        ({"allowed_hosts": ["a b"]}, "media.allowed_hosts"),
        ({"max_download_bytes": 10}, "media.max_download_bytes"),
        ({"directory": ""}, "media.directory"),
        ({"colour": 1}, "media.colour"),
    ],
)
def test_bad_media_settings_name_their_key(media: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"media": media})
    assert caught.value.key == key

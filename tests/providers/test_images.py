"""Images through the real OpenAI SDK against the fake: GPT image and DALL-E 3 request
shapes, base64 and URL replies, the download guard, content-policy refusals."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from alchemy.errors import PermanentError, RateLimitedError, RetryableError
from alchemy.providers.base import ContentPolicyError, ImageRequest
from alchemy.providers.images import sniff_mime
from tests.fakes.ai_server import FakeAI, Reply, png_bytes
from tests.providers.support import providers_for


async def test_gpt_image_model_base64_reply(fake_ai: FakeAI) -> None:
    providers = providers_for(fake_ai)
    image = png_bytes(32, 16)
    fake_ai.script("images", Reply.image_b64(image))
    try:
        result = await providers.images().generate(
            ImageRequest("a red kite", "gpt-image-1.5", size="1536x1024", quality="high")
        )
    finally:
        await providers.aclose()
    assert result.data == image
    assert (result.mime_type, result.model, result.size, result.quality) == (
        "image/png",
        "gpt-image-1.5",
        "1536x1024",
        "high",
    )
    assert result.revised_prompt is None
    [body] = fake_ai.bodies("images")
    assert body == {
        "model": "gpt-image-1.5",
        "prompt": "a red kite",
        "n": 1,
        "size": "1536x1024",
        "quality": "high",
    }


async def test_dall_e_3_request_shape_and_url_reply_downloaded(fake_ai: FakeAI) -> None:
    providers = providers_for(fake_ai)
    image = png_bytes(24, 24)
    fake_ai.script("images", Reply.image_url(image))
    try:
        result = await providers.images().generate(
            ImageRequest("a lighthouse", "dall-e-3", size="1792x1024", quality="hd", style="vivid")
        )
    finally:
        await providers.aclose()
    assert result.data == image
    assert result.revised_prompt == "A revised version of: a lighthouse"
    assert result.size == "1792x1024"
    assert fake_ai.downloads == 1
    [body] = fake_ai.bodies("images")
    assert body["style"] == "vivid"
    assert body["quality"] == "hd"


async def test_dall_e_3_base64_reply(fake_ai: FakeAI) -> None:
    providers = providers_for(fake_ai)
    fake_ai.script("images", Reply.image_b64(png_bytes()))
    try:
        result = await providers.images().generate(ImageRequest("x", "dall-e-3"))
    finally:
        await providers.aclose()
    assert result.mime_type == "image/png"
    assert fake_ai.downloads == 0


async def test_url_from_a_host_not_on_the_allow_list_is_not_fetched(fake_ai: FakeAI) -> None:
    providers = providers_for(fake_ai, media={"allowed_hosts": ["images.example.com"]})
    fake_ai.script("images", Reply.image_url(png_bytes()))
    try:
        with pytest.raises(PermanentError, match="host not allowed"):
            await providers.images().generate(ImageRequest("x", "dall-e-3"))
    finally:
        await providers.aclose()
    assert fake_ai.downloads == 0


async def test_url_to_an_internal_address_is_refused(fake_ai: FakeAI) -> None:
    providers = providers_for(fake_ai)
    fake_ai.script("images", Reply.image_url(url="http://169.254.169.254/latest/meta-data"))
    try:
        with pytest.raises(PermanentError, match="host not allowed"):
            await providers.images().generate(ImageRequest("x", "dall-e-3"))
    finally:
        await providers.aclose()


async def test_a_download_over_the_size_cap_is_refused(fake_ai: FakeAI) -> None:
    providers = providers_for(fake_ai, media={"max_download_bytes": 2048})
    big = Image.new("RGB", (256, 256))
    big.putdata([(i % 251, (i * 7) % 253, (i * 13) % 255) for i in range(256 * 256)])
    out = io.BytesIO()
    big.save(out, format="PNG")
    fake_ai.script("images", Reply.image_url(out.getvalue()))
    try:
        with pytest.raises(PermanentError, match="byte cap"):
            await providers.images().generate(ImageRequest("x", "dall-e-3"))
    finally:
        await providers.aclose()


async def test_an_expired_url_is_retryable(fake_ai: FakeAI) -> None:
    providers = providers_for(fake_ai)
    fake_ai.script("images", Reply.image_url(url=f"{fake_ai.origin}/files/gone.png"))
    try:
        with pytest.raises(RetryableError, match="HTTP 404"):
            await providers.images().generate(ImageRequest("x", "dall-e-3"))
    finally:
        await providers.aclose()


@pytest.mark.parametrize(
    ("model", "code"),
    [("dall-e-3", "content_policy_violation"), ("gpt-image-1.5", "moderation_blocked")],
)
async def test_content_policy_refusal_is_permanent_and_readable(
    fake_ai: FakeAI, model: str, code: str
) -> None:
    providers = providers_for(fake_ai)
    fake_ai.script(
        "images",
        Reply.error(
            400,
            "invalid_request_error",
            "Your request was rejected as a result of our safety system.",
            code=code,
        ),
    )
    try:
        with pytest.raises(ContentPolicyError) as caught:
            await providers.images().generate(ImageRequest("x", model))
    finally:
        await providers.aclose()
    assert str(caught.value).startswith("refused by the content policy: openai 400")
    assert "safety system" in str(caught.value)


async def test_image_429_pauses_and_5xx_retries(fake_ai: FakeAI) -> None:
    providers = providers_for(fake_ai)
    fake_ai.script(
        "images",
        Reply.error(429, "requests", "Rate limit reached", headers={"retry-after": "12"}),
        Reply.error(500, "server_error", "oops"),
    )
    try:
        with pytest.raises(RateLimitedError) as limited:
            await providers.images().generate(ImageRequest("x", "gpt-image-1.5"))
        assert limited.value.retry_after == 12.0
        with pytest.raises(RetryableError, match="500"):
            await providers.images().generate(ImageRequest("x", "gpt-image-1.5"))
    finally:
        await providers.aclose()


@pytest.mark.parametrize(
    ("request_", "words"),
    [
        (ImageRequest("x", "gpt-image-1.5", size="1792x1024"), "not valid for gpt-image-1.5"),
        (ImageRequest("x", "gpt-image-1.5", style="vivid"), "takes no style"),
        (ImageRequest("x", "dall-e-3", quality="high"), "not valid for dall-e-3"),
    ],
)
async def test_options_the_model_does_not_take_fail_before_any_call(
    fake_ai: FakeAI, request_: ImageRequest, words: str
) -> None:
    providers = providers_for(fake_ai)
    try:
        with pytest.raises(PermanentError, match=words):
            await providers.images().generate(request_)
    finally:
        await providers.aclose()
    assert fake_ai.count("images") == 0


async def test_an_empty_or_non_image_reply_is_retryable(fake_ai: FakeAI) -> None:
    providers = providers_for(fake_ai)
    fake_ai.script("images", Reply("no_image"), Reply.image_b64(b"<html>not an image</html>"))
    try:
        with pytest.raises(RetryableError, match="no image"):
            await providers.images().generate(ImageRequest("x", "gpt-image-1.5"))
        with pytest.raises(RetryableError, match="not PNG"):
            await providers.images().generate(ImageRequest("x", "gpt-image-1.5"))
    finally:
        await providers.aclose()


def test_sniff_mime() -> None:
    assert sniff_mime(png_bytes()) == "image/png"
    assert sniff_mime(b"\xff\xd8\xff\xe0rest") == "image/jpeg"
    assert sniff_mime(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert sniff_mime(b"GIF89a...") == "image/gif"
    assert sniff_mime(b"<svg") is None

"""The process's provider clients, built on first use from ``[providers]`` and closed with
the services, and the rule that picks a text provider and model for a job.

SDK clients get an explicit ``max_retries`` (default 0: the queue's own retries are the
retry policy, so SDK retries never multiply API spend) and an explicit ``timeout``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from alchemy.config import MediaConfig, ProvidersConfig
from alchemy.errors import PermanentError
from alchemy.providers.base import TEXT_PROVIDERS, ImageProvider, TextProvider
from alchemy.providers.offline import MODEL as OFFLINE_MODEL
from alchemy.providers.offline import OfflineImages, OfflineText

MODEL_PREFIXES: Mapping[str, tuple[str, ...]] = {
    "anthropic": ("claude",),
    "openai": ("gpt", "chatgpt", "o1", "o3", "o4", "ft:gpt"),
    "offline": ("offline",),
}
# Passed explicitly so that ANTHROPIC_BASE_URL / OPENAI_BASE_URL in the environment, which the
# SDKs would otherwise read, cannot redirect calls behind the configuration's back.
ANTHROPIC_PUBLIC_URL = "https://api.anthropic.com"
OPENAI_PUBLIC_URL = "https://api.openai.com/v1"
KEY_NAMES: Mapping[str, str] = {"anthropic": "anthropic_api_key", "openai": "openai_api_key"}


@dataclass(frozen=True, slots=True)
class Choice:
    """A text provider and model, and where the choice came from."""

    provider: str
    model: str
    source: str  # job | row | brand | config


def provider_of_model(model: str) -> str | None:
    for provider, prefixes in MODEL_PREFIXES.items():
        if model.startswith(prefixes):
            return provider
    return None


def choose_text(levels: Sequence[tuple[str, Mapping[str, Any]]], cfg: ProvidersConfig) -> Choice:
    """The first level (job, then row, then brand) that names a provider or a model decides.

    A level's model goes with its provider; a model named without a provider implies one
    from its prefix (``claude-*`` is anthropic, ``gpt-*`` openai). A provider named without
    a model uses the config's model for it. With no level naming either: the config.
    """
    for source, level in levels:
        provider, model = level.get("provider") or None, level.get("model") or None
        if provider is None and model is None:
            continue
        if provider is None:
            provider = provider_of_model(model or "")
            if provider is None:
                raise PermanentError(f"{source}: cannot tell the provider of model {model!r}")
        if provider not in TEXT_PROVIDERS:
            raise PermanentError(f"{source}: unknown text provider {provider!r}")
        return Choice(provider, model or default_model(provider, cfg), source)
    return Choice(cfg.text, default_model(cfg.text, cfg), "config")


def default_model(provider: str, cfg: ProvidersConfig) -> str:
    return {
        "anthropic": cfg.anthropic_model,
        "openai": cfg.openai_model,
        "offline": OFFLINE_MODEL,
    }[provider]


class Providers:
    """Lazily built clients. Nothing here touches the network or the event loop until a
    provider is first asked for."""

    def __init__(self, config: ProvidersConfig, media: MediaConfig) -> None:
        self.config = config
        self.media = media
        self._clients: dict[str, Any] = {}
        self._session: Any = None
        self._text: dict[str, TextProvider] = {"offline": OfflineText()}
        self._images: dict[str, ImageProvider] = {"offline": OfflineImages()}

    @property
    def secrets(self) -> tuple[str, ...]:
        keys = (self.config.anthropic_api_key.reveal(), self.config.openai_api_key.reveal())
        return tuple(key for key in keys if key)

    def usable_text(self) -> list[str]:
        """The text providers a job could pick: the one in use (``auto`` resolved) and every
        one with a key (a job, row or brand may name another provider than the default)."""
        names = [self.config.text]
        for name, key in KEY_NAMES.items():
            if getattr(self.config, key).reveal() and name not in names:
                names.append(name)
        return [name for name in names if name != "offline"]

    def modules(self, *, text: bool, images: bool) -> list[str]:
        """The modules the providers of :meth:`warm` import (slow: import them in a thread
        first, then call :meth:`warm` on the loop)."""
        wanted = {"anthropic": "alchemy.providers.claude", "openai": "alchemy.providers.gpt"}
        names = [wanted[name] for name in self.usable_text()] if text else []
        if images and self.config.image == "openai":
            names.append("alchemy.providers.images")
        return names

    def warm(self, *, text: bool, images: bool) -> None:
        """Build now the clients a first job would build: each usable text provider
        (``text``), the configured image provider (``images``), and what their SDKs load
        on a first call. Call it on the event loop (the image provider's HTTP session
        belongs to it). A provider without its key is left for the job to report."""
        built: list[Any] = []
        with contextlib.suppress(PermanentError):
            if text:
                built += [self.text(name) for name in self.usable_text()]
            if images:
                built.append(self.images())
        for provider in built:
            prepare = getattr(provider, "warm", None)
            if prepare is not None:
                prepare()

    def text(self, name: str) -> TextProvider:
        self._refuse_if_forbidden(name)
        provider = self._text.get(name)
        if provider is None:
            provider = self._build_text(name)
            self._text[name] = provider
        return provider

    def images(self, name: str | None = None) -> ImageProvider:
        name = name or self.config.image
        self._refuse_if_forbidden(name)
        provider = self._images.get(name)
        if provider is None:
            if name != "openai":
                raise PermanentError(f"unknown image provider {name!r}")
            import aiohttp

            from alchemy.providers.images import OpenAIImages

            self._session = aiohttp.ClientSession(auto_decompress=True)
            provider = OpenAIImages(
                self._client("openai"), self.media, self._session, secrets=self.secrets
            )
            self._images[name] = provider
        return provider

    def _refuse_if_forbidden(self, name: str) -> None:
        """Production (``forbid_offline``) never writes placeholders, whoever asks."""
        if name == "offline" and self.config.forbid_offline:
            raise PermanentError(
                "the offline provider is refused here (providers.forbid_offline = true)"
            )

    def _build_text(self, name: str) -> TextProvider:
        if name == "anthropic":
            from alchemy.providers.claude import ClaudeText

            client = self._client("anthropic")
            return ClaudeText(client, max_tokens=self.config.max_tokens, secrets=self.secrets)
        if name == "openai":
            from alchemy.providers.gpt import GptText

            client = self._client("openai")
            return GptText(client, max_tokens=self.config.max_tokens, secrets=self.secrets)
        raise PermanentError(f"unknown text provider {name!r}")

    def _client(self, name: str) -> Any:
        client = self._clients.get(name)
        if client is not None:
            return client
        cfg = self.config
        key = getattr(cfg, KEY_NAMES[name]).reveal()
        if not key:
            variable = KEY_NAMES[name].upper()
            raise PermanentError(
                f"{name} is selected but providers.{KEY_NAMES[name]} is not set (env {variable})"
            )
        options: dict[str, Any] = {
            "api_key": key,
            "max_retries": cfg.max_retries,
            "timeout": cfg.timeout,
        }
        if cfg.strict_responses:
            options["_strict_response_validation"] = True
        if name == "anthropic":
            import anthropic

            client = anthropic.AsyncAnthropic(
                base_url=cfg.anthropic_base_url or ANTHROPIC_PUBLIC_URL, **options
            )
        else:
            import openai

            client = openai.AsyncOpenAI(
                base_url=cfg.openai_base_url or OPENAI_PUBLIC_URL, **options
            )
        self._clients[name] = client
        return client

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.close()
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._text = {"offline": OfflineText()}
        self._images = {"offline": OfflineImages()}

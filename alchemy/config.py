"""Configuration: loaded once from ``config.toml`` plus environment overrides, validated,
and frozen.

Every problem raises :class:`~alchemy.errors.ConfigError` naming the dotted key, so startup
can stop with one line and exit status 78. Nothing else in alchemy reads ``os.environ``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypedDict, get_type_hints
from urllib.parse import unquote, urlsplit

from alchemy.errors import ConfigError

DEFAULT_CONFIG_PATH: Final = Path("config.toml")
QUEUE_NAME_PATTERN: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
HANDLER_PATTERN: Final = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

# Environment variable -> dotted key it overrides.
ENV_OVERRIDES: Final[Mapping[str, str]] = {
    "REDIS_URL": "redis.url",
    "DATABASE_URL": "database.url",
    "ANTHROPIC_API_KEY": "providers.anthropic_api_key",
    "OPENAI_API_KEY": "providers.openai_api_key",
    "ALCHEMY_REDIS_PREFIX": "redis.prefix",
    "ALCHEMY_WORKER_NAME": "worker.name",
    "ALCHEMY_WORKER_HOST": "worker.host",
    "ALCHEMY_LOG_LEVEL": "log.level",
    "ALCHEMY_LOG_FORMAT": "log.format",
    "ALCHEMY_HTTP_HOST": "http.host",
    "ALCHEMY_HTTP_PORT": "http.port",
    "ALCHEMY_ADMIN_TOKEN": "http.admin_token",
    "ALCHEMY_REDIS_SENTINEL_PASSWORD": "redis.sentinel_password",
    "ALCHEMY_TEXT_PROVIDER": "providers.text_provider",
    "ALCHEMY_IMAGE_PROVIDER": "providers.image_provider",
    "ALCHEMY_FORBID_OFFLINE": "providers.forbid_offline",
    "ALCHEMY_MEDIA_URL_SECRET": "media.url_secret",
    "AWS_ACCESS_KEY_ID": "media.s3_access_key_id",
    "AWS_SECRET_ACCESS_KEY": "media.s3_secret_access_key",
}
# Overrides whose value is parsed as an integer.
ENV_INTEGERS: Final = frozenset({"ALCHEMY_HTTP_PORT"})
# Overrides whose value is parsed as a boolean (1/true/yes/on, 0/false/no/off).
ENV_BOOLEANS: Final = frozenset({"ALCHEMY_FORBID_OFFLINE"})
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True, slots=True)
class Secret:
    """A value that must never be printed: its repr and str are masked."""

    value: str

    def reveal(self) -> str:
        return self.value

    def __bool__(self) -> bool:
        return bool(self.value)

    def __repr__(self) -> str:
        return "Secret('***')" if self.value else "Secret('')"

    __str__ = __repr__


MASK: Final = "***"
# Schemes whose user name is not a secret (a Redis ACL user, a PostgreSQL role): only the
# password is masked. In any other URL (a provider's base URL) the whole userinfo is, since
# "https://TOKEN@host" carries a token where the user name would be.
_NAMED_USER_SCHEMES: Final = frozenset({"redis", "rediss", "unix", "postgres", "postgresql"})
# Query (and fragment) parameters whose values are secrets, e.g. unix://...?password=...
_SECRET_PARAMETER: Final = re.compile(
    r"pass|pwd|token|key|secret|auth|credential|signature", re.IGNORECASE
)


def mask_url(url: str) -> str:
    """``url`` with every secret replaced by ``***``, safe to print and log: the password
    (``redis://user:***@host``; the whole userinfo of other schemes: ``https://***@host``)
    and the values of query or fragment parameters named like a password, token, key or
    secret (``unix:///run/redis.sock?password=***``). Everything else is left as written."""
    return _url_secrets(url)[0]


def url_secrets(url: str) -> list[str]:
    """The secrets :func:`mask_url` hides in ``url``, as written and percent-decoded, to be
    registered for log redaction (:func:`alchemy.logs.register_secrets`)."""
    found = _url_secrets(url)[1]
    return sorted({form for secret in found for form in (secret, unquote(secret)) if form})


def _url_secrets(url: str) -> tuple[str, list[str]]:
    scheme, sep, rest = url.partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        scheme, rest = "", url
    secrets: list[str] = []
    userinfo, host_and_rest = _userinfo(rest)
    if userinfo is not None:
        user, colon, password = userinfo.partition(":")
        if scheme.lower() in _NAMED_USER_SCHEMES:
            shown = f"{user}:{MASK}" if colon else user
            secrets.append(password)
        else:
            shown = MASK
            secrets += [userinfo, password]
        rest = f"{shown}@{host_and_rest}"
    head, rest = _split_before(rest, "?#")
    masked_parameters = _mask_parameters(rest, secrets)
    prefix = f"{scheme}://" if scheme else ""
    return prefix + head + masked_parameters, [s for s in secrets if s]


def _userinfo(rest: str) -> tuple[str | None, str]:
    """The userinfo of an URL's part after ``scheme://`` and what follows its ``@``.

    Normally it ends at the last ``@`` before the first ``/``, ``?`` or ``#``. When a
    password holds one of those unescaped (``redis://:pa/ss@host``), the last ``@`` of the
    URL ends it if what comes before has a ``:``: more is masked, never less."""
    netloc, _ = _split_before(rest, "/?#")
    if "@" in netloc:
        userinfo, _, _ = netloc.rpartition("@")
        return userinfo, rest[len(userinfo) + 1 :]
    before, at, after = rest.rpartition("@")
    if at and ":" in before:
        return before, after
    return None, rest


def _split_before(text: str, stops: str) -> tuple[str, str]:
    ends = [i for i in (text.find(c) for c in stops) if i >= 0]
    cut = min(ends) if ends else len(text)
    return text[:cut], text[cut:]


def _mask_parameters(tail: str, secrets: list[str]) -> str:
    """``?query#fragment`` with the values of secret-named parameters masked."""
    out = []
    for part in re.split(r"([?#&;])", tail):
        name, eq, value = part.partition("=")
        if eq and value and _SECRET_PARAMETER.search(unquote(name)):
            secrets.append(value)
            part = f"{name}={MASK}"
        out.append(part)
    return "".join(out)


def _spec(default: Any = dataclasses.MISSING, **checks: Any) -> Any:
    if default is dataclasses.MISSING:
        return field(metadata=checks)
    return field(default=default, metadata=checks)


# host:port, the host a name, an IPv4 address or a bracketed IPv6 address.
NODE_ADDRESS_PATTERN: Final = r"^(?:[A-Za-z0-9_.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]):\d{1,5}$"
TOPOLOGIES: Final = ("single", "cluster", "sentinel")


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """Where Redis is: one server (``url``), a Cluster (``cluster_nodes``, seeds) or a
    master watched by Sentinel (``sentinels`` + ``sentinel_master``). With a Cluster or
    Sentinel, ``url`` still gives the data nodes' scheme (TLS), user, password and (for
    Sentinel) database; its host and port are not used."""

    url: Secret = _spec(Secret("redis://127.0.0.1:6379/0"), url=("redis", "rediss", "unix"))
    prefix: str = _spec("alchemy", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    block_timeout: float = _spec(1.0, min=0.1, max=10.0)
    socket_timeout: float = _spec(5.0, min=0.5, max=120.0)
    max_connections: int = _spec(32, min=4, max=10_000)
    topology: str = _spec("single", choices=TOPOLOGIES)
    cluster_nodes: tuple[str, ...] = _spec((), item_pattern=NODE_ADDRESS_PATTERN)
    sentinels: tuple[str, ...] = _spec((), item_pattern=NODE_ADDRESS_PATTERN)
    sentinel_master: str = _spec("", pattern=r"^[A-Za-z0-9_.:-]{0,128}$")
    sentinel_password: Secret = _spec(Secret(""))


def node_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) as (host, port); the pattern was checked already."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    url: Secret = _spec(
        Secret("postgresql://postgres@127.0.0.1:5432/postgres"), url=("postgresql", "postgres")
    )
    pool_size: int = _spec(10, min=1, max=1000)
    migrate_on_start: bool = _spec(False)


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    name: str = _spec("main", pattern=r"^[A-Za-z0-9_.@-]{1,64}$")
    host: str = _spec("", pattern=r"^[A-Za-z0-9_.-]{0,128}$")
    shutdown_timeout: float = _spec(25.0, min=0.0, max=3600.0)
    heartbeat_interval: float = _spec(0.5, min=0.1, max=60.0)
    heartbeat_ttl: float = _spec(3.0, min=0.5, max=600.0)
    recovery_interval: float = _spec(0.5, min=0.1, max=600.0)
    reconcile_interval: float = _spec(10.0, min=0.5, max=3600.0)
    max_recoveries: int = _spec(2, min=0, max=1000)
    event_loop: str = _spec("uvloop", choices=("uvloop", "asyncio"))

    @property
    def identity(self) -> str:
        return f"{self.host or socket.gethostname()}:{self.name}"


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = _spec("info", choices=("debug", "info", "warning", "error"))
    format: str = _spec("auto", choices=("auto", "json", "console"))
    buffer_lines: int = _spec(100_000, min=10, max=10_000_000)


_BASE_URL: Final = r"^(https?://\S+)?$"
MAX_URL_LIFETIME: Final = 7 * 86_400.0  # SigV4's limit on a presigned URL
MIN_URL_SECRET: Final = 16


class ProvidersInUse(TypedDict):
    """The providers a process uses, as ``/readyz``, ``status`` and its heartbeat show them."""

    text: str  # anthropic | openai | offline ("auto" resolved)
    image: str  # openai | offline
    offline: list[str]  # what the offline provider serves: "text", "image"; [] = nothing


@dataclass(frozen=True, slots=True)
class ProvidersConfig:
    """The AI providers. ``text_provider`` / ``image_provider`` ``"auto"`` (the default)
    picks the real provider whose key is set and ``offline`` only when none is:
    :attr:`text` and :attr:`image` are the ones in use."""

    anthropic_api_key: Secret = _spec(Secret(""))
    openai_api_key: Secret = _spec(Secret(""))
    text_provider: str = _spec("auto", choices=("auto", "offline", "anthropic", "openai"))
    image_provider: str = _spec("auto", choices=("auto", "offline", "openai"))
    # The production guard: refuse to start (exit 78) with the offline provider in use, and
    # refuse any job, row or brand that names it.
    forbid_offline: bool = _spec(False)
    anthropic_model: str = _spec("claude-sonnet-5-5", pattern=r"^\S{1,128}$")
    anthropic_base_url: str = _spec("", pattern=_BASE_URL)
    openai_model: str = _spec("gpt-5.5", pattern=r"^\S{1,128}$")
    openai_base_url: str = _spec("", pattern=_BASE_URL)
    max_tokens: int = _spec(4096, min=256, max=128_000)
    timeout: float = _spec(120.0, min=0.1, max=3600.0)
    max_retries: int = _spec(0, min=0, max=3)
    # Seconds a runner holds the lease of a piece of paid work; 0 = computed from timeout
    # and max_retries (alchemy.paid.leases.lease_seconds).
    work_lease: float = _spec(0.0, min=0.0, max=86_400.0)
    strict_responses: bool = _spec(False)
    image_model: str = _spec("gpt-image-1.5", pattern=r"^\S{1,128}$")
    image_size: str = _spec("1024x1024", pattern=r"^(auto|\d{2,5}x\d{2,5})$")
    image_quality: str = _spec("", pattern=r"^[a-z]{0,16}$")
    image_style: str = _spec("", choices=("", "vivid", "natural"))

    @property
    def text(self) -> str:
        """The text provider in use: ``text_provider`` with ``auto`` resolved (Anthropic's
        key first, then OpenAI's, else ``offline``)."""
        if self.text_provider != "auto":
            return self.text_provider
        if self.anthropic_api_key:
            return "anthropic"
        return "openai" if self.openai_api_key else "offline"

    @property
    def image(self) -> str:
        """The image provider in use: ``image_provider`` with ``auto`` resolved."""
        if self.image_provider != "auto":
            return self.image_provider
        return "openai" if self.openai_api_key else "offline"

    def in_use(self) -> ProvidersInUse:
        """The providers in use as JSON, the shape ``/readyz``, ``status`` and the
        heartbeat show: ``text``, ``image`` and ``offline``, what the offline provider
        serves (``[]``: nothing)."""
        return {"text": self.text, "image": self.image, "offline": list(self.offline_uses)}

    @property
    def offline_uses(self) -> tuple[str, ...]:
        """What the offline provider serves by default: ``("text", "image")``, one, or
        none."""
        in_use = (("text", self.text), ("image", self.image))
        return tuple(kind for kind, provider in in_use if provider == "offline")


@dataclass(frozen=True, slots=True)
class BudgetsConfig:
    """Spend budgets (alchemy.paid.budgets). Amounts in USD from the price table; 0 = no
    budget of that kind. A brand's own row in ``brand_budgets`` overrides the defaults."""

    daily_usd: float = _spec(0.0, min=0.0, max=1e9)
    monthly_usd: float = _spec(0.0, min=0.0, max=1e9)
    time_zone: str = _spec("UTC", pattern=r"^[A-Za-z0-9_+/-]{1,64}$")
    # Global daily caps per provider, over every brand.
    anthropic_daily_usd: float = _spec(0.0, min=0.0, max=1e9)
    openai_daily_usd: float = _spec(0.0, min=0.0, max=1e9)
    # Seconds before a job held for budget_exhausted is looked at again (sooner: the
    # window's end, or an operator raising the budget).
    recheck: float = _spec(60.0, min=0.05, max=86_400.0)
    # Seconds a reservation counts while its call is in flight: the bound on a dead
    # process's reservations. 0 = the paid-work lease (alchemy.paid.leases.lease_seconds).
    reservation_timeout: float = _spec(0.0, min=0.0, max=86_400.0)
    # Seconds a provider's own spend-limit refusal holds its queues (alchemy resume sooner).
    provider_pause: float = _spec(3600.0, min=1.0, max=30 * 86_400.0)

    def provider_cap(self, provider: str) -> float:
        return {"anthropic": self.anthropic_daily_usd, "openai": self.openai_daily_usd}.get(
            provider, 0.0
        )


@dataclass(frozen=True, slots=True)
class MediaConfig:
    directory: str = _spec(".local/media", pattern=r"^\S.{0,4095}$")
    allowed_hosts: tuple[str, ...] = _spec(
        ("oaidalleapiprodscus.blob.core.windows.net",),
        item_pattern=r"^(https?://)?[A-Za-z0-9.-]{1,253}(:\d{1,5})?$",
    )
    max_download_bytes: int = _spec(20 * 1_048_576, min=1024, max=1024 * 1_048_576)
    download_timeout: float = _spec(30.0, min=0.1, max=600.0)
    thumbnail_size: int = _spec(256, min=16, max=4096)
    # Where new media goes: this host's directory, or an S3-compatible bucket (s3_*).
    store: str = _spec("local", choices=("local", "s3"))
    # Seconds a media URL (a presigned GET, or a signed link to the listener) stays valid.
    url_lifetime: float = _spec(3600.0, min=1.0, max=MAX_URL_LIFETIME)
    # The HMAC key of the listener's /media/{token} links; the same on every host.
    url_secret: Secret = _spec(Secret(""))
    # Where browsers reach this host's listener ("" = http://[http] host:port + path_prefix).
    public_url: str = _spec("", pattern=_BASE_URL)
    s3_endpoint: str = _spec("", pattern=_BASE_URL)  # "" = AWS S3
    s3_region: str = _spec("us-east-1", pattern=r"^[a-z0-9-]{1,64}$")
    s3_bucket: str = _spec("", pattern=r"^([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])?$")
    s3_prefix: str = _spec("", pattern=r"^([A-Za-z0-9!_.*'()-][A-Za-z0-9!_.*'()/-]{0,510}/)?$")
    s3_path_style: bool = _spec(False)
    s3_access_key_id: str = _spec("", pattern=r"^[\x21-\x7e]{0,256}$")
    s3_secret_access_key: Secret = _spec(Secret(""))


# A host name, an IPv4 address or an IPv6 address (with or without brackets); no port.
ALLOWED_HOST_PATTERN: Final = (
    r"^(?:[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63})*|\[?[0-9A-Fa-f:.]{2,45}\]?)$"
)


# "" or segments "/name", none starting with a dot, no trailing slash.
PATH_PREFIX_PATTERN: Final = r"^(/[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,63}){0,8}$"


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """The worker's HTTP listener: health, readiness, metrics, the admin API."""

    host: str = _spec("127.0.0.1", pattern=r"^[A-Za-z0-9_.:-]{1,253}$")
    port: int = _spec(0, min=0, max=65535)  # 0 = no listener
    admin_token: Secret = _spec(Secret(""))
    check_database: bool = _spec(True)
    # Host header names answered besides the loopback ones and ``host`` (DNS rebinding).
    allowed_hosts: tuple[str, ...] = _spec((), item_pattern=ALLOWED_HOST_PATTERN)
    # Where every route lives ("/alchemy": the dashboard at /alchemy/, /alchemy/api/...), for
    # a reverse proxy that passes its own path prefix on.
    path_prefix: str = _spec("", pattern=PATH_PREFIX_PATTERN)


@dataclass(frozen=True, slots=True)
class EventsConfig:
    """The per-queue events stream (docs/protocol.md) and the admin API's recent
    throughput."""

    enabled: bool = _spec(True)
    max_length: int = _spec(10_000, min=100, max=10_000_000)


@dataclass(frozen=True, slots=True)
class RecordsConfig:
    """The capped, expiring records of jobs' last transitions, for lookup by id."""

    enabled: bool = _spec(True)
    max_per_queue: int = _spec(10_000, min=100, max=1_000_000)
    ttl: float = _spec(86_400.0, min=1.0, max=30 * 86_400.0)


@dataclass(frozen=True, slots=True)
class QueueConfig:
    name: str
    handler: str = _spec(pattern=HANDLER_PATTERN.pattern)
    enabled: bool = _spec(True)
    concurrency: int = _spec(1, min=1, max=10_000)
    rate_limit: int = _spec(0, min=0, max=10_000_000)
    rate_period: float = _spec(60.0, min=0.001, max=86_400.0)
    rate_burst: int = _spec(0, min=0, max=10_000_000)
    max_attempts: int = _spec(3, min=1, max=1000)
    backoff_initial: float = _spec(5.0, min=0.0, max=86_400.0)
    backoff_multiplier: float = _spec(2.0, min=1.0, max=100.0)
    backoff_max: float = _spec(600.0, min=0.0, max=604_800.0)
    backoff_jitter: float = _spec(0.5, min=0.0, max=1.0)
    timeout: float = _spec(300.0, min=0.001, max=86_400.0)
    max_payload_bytes: int = _spec(1_048_576, min=64, max=512 * 1_048_576)
    max_dead: int = _spec(100_000, min=1, max=100_000_000)
    max_deferrals: int = _spec(50, min=1, max=1_000_000)
    max_deferred: float = _spec(3600.0, min=1.0, max=30 * 86_400.0)


@dataclass(frozen=True, slots=True)
class Config:
    redis: RedisConfig
    database: DatabaseConfig
    worker: WorkerConfig
    log: LogConfig
    providers: ProvidersConfig
    media: MediaConfig
    queues: tuple[QueueConfig, ...]
    source: str = "<defaults>"
    http: HttpConfig = field(default_factory=HttpConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    records: RecordsConfig = field(default_factory=RecordsConfig)
    budgets: BudgetsConfig = field(default_factory=BudgetsConfig)

    def queue(self, name: str) -> QueueConfig:
        for queue in self.queues:
            if queue.name == name:
                return queue
        raise KeyError(name)


_SECTIONS: Final[Mapping[str, type]] = {
    "redis": RedisConfig,
    "database": DatabaseConfig,
    "worker": WorkerConfig,
    "log": LogConfig,
    "providers": ProvidersConfig,
    "media": MediaConfig,
    "http": HttpConfig,
    "events": EventsConfig,
    "records": RecordsConfig,
    "budgets": BudgetsConfig,
}


def load_config(path: Path | None, environ: Mapping[str, str]) -> Config:
    """Read ``path`` (or the defaults when it is ``None``), apply env overrides, validate."""
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("--config", f"file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(path), f"not valid TOML: {exc}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(str(path), f"cannot read: {exc}") from None
    _apply_env(raw, environ)
    return parse_config(raw, source=source)


def parse_config(raw: Mapping[str, Any], *, source: str = "<mapping>") -> Config:
    unknown = sorted(set(raw) - set(_SECTIONS) - {"queues"})
    if unknown:
        raise ConfigError(unknown[0], "unknown section or key")
    sections = {name: _build(cls, _table(raw, name), name) for name, cls in _SECTIONS.items()}
    queues_raw = _table(raw, "queues")
    queues = tuple(
        _build_queue(name, _table(queues_raw, name, prefix="queues")) for name in queues_raw
    )
    config = Config(queues=queues, source=source, **sections)
    _check_relations(config)
    return config


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    for variable, dotted in ENV_OVERRIDES.items():
        value = environ.get(variable)
        if value is None or value == "":
            continue
        section, key = dotted.split(".")
        table = raw.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(section, "must be a table")
        if variable in ENV_INTEGERS:
            table[key] = _env_int(variable, dotted, value)
        elif variable in ENV_BOOLEANS:
            table[key] = _env_bool(variable, dotted, value)
        else:
            table[key] = value


def _env_bool(variable: str, dotted: str, value: str) -> bool:
    word = value.strip().lower()
    if word in _TRUE | _FALSE:
        return word in _TRUE
    raise ConfigError(dotted, f"must be 1/true/yes/on or 0/false/no/off (env {variable})")


def _env_int(variable: str, dotted: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(dotted, f"must be an integer (env {variable}), got {value!r}") from None


def _table(raw: Mapping[str, Any], name: str, *, prefix: str = "") -> Mapping[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{prefix}.{name}" if prefix else name, "must be a table")
    return value


def _build_queue(name: str, table: Mapping[str, Any]) -> QueueConfig:
    if not QUEUE_NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f"queues.{name}", "queue names are 1-64 of a-z 0-9 _ - and start with a letter or digit"
        )
    if "handler" not in table:
        raise ConfigError(f"queues.{name}.handler", 'missing ("module:callable")')
    queue: QueueConfig = _build(QueueConfig, table, f"queues.{name}", fixed={"name": name})
    return queue


def _build(cls: type, table: Mapping[str, Any], path: str, fixed: Mapping[str, Any] = {}) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in fixed}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise ConfigError(f"{path}.{unknown[0]}", "unknown key")
    hints = get_type_hints(cls)
    values: dict[str, Any] = dict(fixed)
    for name, spec in fields.items():
        if name in table:
            coerce = _coerce_strings if hints[name] == tuple[str, ...] else _coerce
            values[name] = coerce(table[name], hints[name], spec.metadata, f"{path}.{name}")
    return cls(**values)


def _coerce(value: Any, kind: Any, checks: Mapping[str, Any], key: str) -> Any:
    if kind is Secret:
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a string, got {type(value).__name__}")
        if "url" in checks:
            scheme = urlsplit(value).scheme
            if scheme not in checks["url"]:
                allowed = ", ".join(f"{s}://" for s in checks["url"])
                raise ConfigError(key, f"must be a URL starting with {allowed}")
        return Secret(value)
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be an integer, got {value!r}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"must be a number, got {value!r}")
        value = float(value)
    elif kind is str and not isinstance(value, str):
        raise ConfigError(key, f"must be a string, got {value!r}")
    _check_bounds(value, checks, key)
    return value


def _coerce_strings(value: Any, _: Any, checks: Mapping[str, Any], key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(key, f"must be a list of strings, got {value!r}")
    for item in value:
        _check_bounds(item, {"pattern": checks["item_pattern"]}, key)
    return tuple(value)


def _check_bounds(value: Any, checks: Mapping[str, Any], key: str) -> None:
    if "min" in checks and value < checks["min"]:
        raise ConfigError(key, f"must be >= {checks['min']}, got {value!r}")
    if "max" in checks and value > checks["max"]:
        raise ConfigError(key, f"must be <= {checks['max']}, got {value!r}")
    if "choices" in checks and value not in checks["choices"]:
        raise ConfigError(key, f"must be one of {', '.join(checks['choices'])}; got {value!r}")
    if "pattern" in checks and not re.fullmatch(checks["pattern"], value):
        shown = mask_url(value) if key.endswith("url") else value
        raise ConfigError(key, f"{shown!r} does not match {checks['pattern']}")


def _check_relations(config: Config) -> None:
    worker = config.worker
    # Twice: one late heartbeat never makes a live process look dead. Three times: a Redis
    # stall long enough to expire a heartbeat also holds one of ours for longer than the
    # slow-answer limit, (ttl - 2 * interval) / 2, so it is never taken for a death
    # (alchemy.worker.membership).
    if worker.heartbeat_ttl < 3 * worker.heartbeat_interval:
        raise ConfigError(
            "worker.heartbeat_ttl", "must be at least three times worker.heartbeat_interval"
        )
    # A job taken by a fetch whose reply is still on its way sits in our processing list
    # unowned for up to block_timeout + socket_timeout; a reconcile that returned it in that
    # time would let it run twice.
    redis = config.redis
    wait_for_reply = redis.block_timeout + redis.socket_timeout
    if worker.reconcile_interval <= wait_for_reply:
        raise ConfigError(
            "worker.reconcile_interval",
            f"must be more than redis.block_timeout + redis.socket_timeout"
            f" ({wait_for_reply:g}s): a job whose fetch reply is still on its way would be"
            " returned to the queue and run twice",
        )
    if worker.recovery_interval > worker.heartbeat_ttl:
        raise ConfigError("worker.recovery_interval", "must be at most worker.heartbeat_ttl")
    _check_topology(config.redis)
    for queue in config.queues:
        path = f"queues.{queue.name}"
        if queue.backoff_max < queue.backoff_initial:
            raise ConfigError(f"{path}.backoff_max", "must be >= backoff_initial")
        if queue.rate_limit == 0 and queue.rate_burst:
            raise ConfigError(f"{path}.rate_burst", "needs rate_limit > 0")
    _check_providers(config.providers)
    _check_budgets(config)
    _check_http(config.http)
    _check_media(config.media)


def _check_budgets(config: Config) -> None:
    _check_time_zone(config.budgets.time_zone)
    bound = config.budgets.reservation_timeout
    providers = config.providers
    longest = (providers.max_retries + 1) * providers.timeout
    if bound and bound < longest:
        raise ConfigError(
            "budgets.reservation_timeout",
            f"must be at least the longest a provider call can take ({longest:g}s: providers"
            " timeout x (max_retries + 1)), or 0 for the lease's time: a reservation that"
            " ends before its call would let the budget be overspent",
        )


def _check_time_zone(name: str) -> None:
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            "budgets.time_zone", f"{name!r} is not a time zone (an IANA name: UTC, Europe/Paris)"
        ) from None


def _check_topology(redis: RedisConfig) -> None:
    """Each topology has what it needs, and nothing of another's."""
    used_by = {
        "cluster_nodes": "cluster",
        "sentinels": "sentinel",
        "sentinel_master": "sentinel",
        "sentinel_password": "sentinel",
    }
    for key, topology in used_by.items():
        if getattr(redis, key) and redis.topology != topology:
            raise ConfigError(f"redis.{key}", f'only used with redis.topology = "{topology}"')
    for key in ("cluster_nodes", "sentinels"):
        for address in getattr(redis, key):
            if not 0 < node_address(address)[1] < 65536:
                raise ConfigError(f"redis.{key}", f"{address!r}: the port must be 1-65535")
    needs = {
        "cluster": [("cluster_nodes", "must list at least one node (host:port)")],
        "sentinel": [
            ("sentinels", "must list at least one sentinel (host:port)"),
            ("sentinel_master", "must name the master the sentinels watch"),
        ],
    }
    for key, problem in needs.get(redis.topology, []):
        if not getattr(redis, key):
            raise ConfigError(f"redis.{key}", problem)
    if redis.topology != "single":
        _check_data_node_url(redis)


def _check_data_node_url(redis: RedisConfig) -> None:
    url = urlsplit(redis.url.reveal())
    if url.scheme == "unix":
        raise ConfigError(
            "redis.url",
            f"must start with redis:// or rediss:// with redis.topology = {redis.topology!r}"
            " (it gives the data nodes' user, password and TLS)",
        )
    if redis.topology == "cluster" and url.path.strip("/") not in ("", "0"):
        raise ConfigError("redis.url", "a Redis Cluster has only database 0: end the URL in /0")


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses; any other name may reach the network."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


MIN_ADMIN_TOKEN: Final = 16


def _check_http(http: HttpConfig) -> None:
    """The admin API never listens beyond this machine without a token."""
    token = http.admin_token.reveal()
    if token and len(token) < MIN_ADMIN_TOKEN:
        raise ConfigError("http.admin_token", f"must have at least {MIN_ADMIN_TOKEN} characters")
    if http.port and not token and not is_loopback_host(http.host):
        raise ConfigError(
            "http.admin_token",
            f"must be set (env ALCHEMY_ADMIN_TOKEN) because http.host = {http.host!r} "
            "is not a loopback address",
        )
    for name in http.allowed_hosts:
        bare = name[1:-1] if name.startswith("[") and name.endswith("]") else name
        if ("[" in name or ":" in name) and not _is_ipv6(bare):
            raise ConfigError(
                "http.allowed_hosts",
                f"{name!r} is neither a host name nor an IP address (leave the port off)",
            )


def _check_media(media: MediaConfig) -> None:
    """An S3 store has what it connects with; a URL secret is long enough to be one."""
    if media.store == "s3":
        needs = {
            "s3_bucket": "must name the bucket",
            "s3_access_key_id": "must be set (env AWS_ACCESS_KEY_ID)",
            "s3_secret_access_key": "must be set (env AWS_SECRET_ACCESS_KEY)",
        }
        for key, problem in needs.items():
            if not getattr(media, key):
                raise ConfigError(f"media.{key}", f'{problem} because media.store = "s3"')
    secret = media.url_secret.reveal()
    if secret and len(secret) < MIN_URL_SECRET:
        raise ConfigError("media.url_secret", f"must have at least {MIN_URL_SECRET} characters")


def _is_ipv6(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 6
    except ValueError:
        return False


MEDIA_HANDLER_MODULE: Final = "alchemy.handlers.media"


def offline_refusal(config: Config) -> ConfigError | None:
    """The production guard's refusal, naming the key to set, or None when it lets the
    process start: ``providers.forbid_offline`` off, or no offline provider in use. The
    image provider counts only while an enabled queue runs the media handler."""
    providers = config.providers
    uses = list(providers.offline_uses)
    media_runs = any(
        q.enabled and q.handler.partition(":")[0] == MEDIA_HANDLER_MODULE for q in config.queues
    )
    if "image" in uses and not media_runs:
        uses.remove("image")
    if not providers.forbid_offline or not uses:
        return None
    kind = uses[0]
    chosen = getattr(providers, f"{kind}_provider")
    if chosen == "auto":
        keys = "ANTHROPIC_API_KEY or OPENAI_API_KEY" if kind == "text" else "OPENAI_API_KEY"
        why = f"is auto and no key is set: set {keys}"
    else:
        why = f'is "offline" (env ALCHEMY_{kind.upper()}_PROVIDER): name a real provider'
    return ConfigError(
        f"providers.{kind}_provider",
        f"{why}; providers.forbid_offline = true (env ALCHEMY_FORBID_OFFLINE) refuses to "
        "start with the offline provider",
    )


def _check_providers(providers: ProvidersConfig) -> None:
    """A real provider needs its key: an offline draft is never chosen silently."""
    from alchemy.providers.image_models import image_option_problem

    needs = {
        "anthropic_api_key": ("ANTHROPIC_API_KEY", [("text_provider", "anthropic")]),
        "openai_api_key": (
            "OPENAI_API_KEY",
            [("text_provider", "openai"), ("image_provider", "openai")],
        ),
    }
    for key, (variable, users) in needs.items():
        for setting, value in users:
            if getattr(providers, setting) == value and not getattr(providers, key):
                raise ConfigError(
                    f"providers.{key}",
                    f"must be set (env {variable}) because providers.{setting} = {value!r}",
                )
    base = providers.anthropic_base_url.rstrip("/")
    if base and base.endswith("/v1"):
        raise ConfigError("providers.anthropic_base_url", "leave /v1 off: the SDK adds it")
    base = providers.openai_base_url.rstrip("/")
    if base and not base.endswith("/v1"):
        raise ConfigError("providers.openai_base_url", "must end in /v1 (the SDK does not add it)")
    for option in ("image_size", "image_quality", "image_style"):
        problem = image_option_problem(providers.image_model, option, getattr(providers, option))
        if problem:
            raise ConfigError(f"providers.{option}", problem)

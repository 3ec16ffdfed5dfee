#!/usr/bin/env python3
"""Make sure the Redis and PostgreSQL that alchemy is configured for are answering.

Run by ``make run``, ``make test`` and ``make bench`` before anything else. For each
service it makes a real connection (Redis ``PING``; PostgreSQL connect + ``SELECT 1``).
When a service does not answer and its URL points at this machine (127.0.0.1, localhost,
::1), it starts one from the machine's own binaries and waits for it:

* Redis: ``redis-server --daemonize yes`` on the URL's port, with persistence off.
* PostgreSQL: the Debian/Ubuntu cluster ``main`` of the newest installed version
  (``pg_ctlcluster``) when its port matches the URL, otherwise a throwaway trust-auth
  cluster in ``.local/postgres`` of this repository (``initdb`` + ``pg_ctl``).

When a local service is down and its program is not installed at all, the distribution's
package is installed first, as ``make tools`` does: with ``apt-get`` when run as root
(``redis-server``; ``postgresql``, whose fresh ``main`` cluster Debian creates with password
authentication over TCP, so this script drops that empty cluster again and starts the
throwaway trust-auth one below). Not root, or no ``apt-get``: it prints the exact command and
exits 69.

A missing database named in a local URL is created. Remote services are never started,
and nothing else is ever stopped or killed.

URLs, in order of precedence: the ``REDIS_URL`` / ``DATABASE_URL`` environment variables,
``[redis] url`` / ``[database] url`` in the config file (``$ALCHEMY_CONFIG``, else
``./config.toml``), then the defaults below. Passwords are masked in everything printed.

Exit status: 0 when both answer, 69 (EX_UNAVAILABLE) when one cannot be reached or
started, 78 (EX_CONFIG) when the config file or a URL cannot be read.

This script uses only the standard library, ``redis`` and ``asyncpg``; it does not import
the ``alchemy`` package, so it works before the package does.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import pwd
import re
import shlex
import shutil
import sys
import tomllib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg
import redis.asyncio as aioredis
from redis import exceptions as redis_errors

EX_UNAVAILABLE: Final = 69
EX_CONFIG: Final = 78

DEFAULT_REDIS_URL: Final = "redis://127.0.0.1:6379/0"
DEFAULT_DATABASE_URL: Final = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "::1"})

CHECK_TIMEOUT: Final = 3.0  # seconds for one connection attempt
START_TIMEOUT: Final = 20.0  # seconds to wait for a service we started
POLL_INTERVAL: Final = 0.5
COMMAND_TIMEOUT: Final = 60.0  # seconds for initdb / pg_ctl / redis-server to return
APT_TIMEOUT: Final = 900.0  # seconds for apt-get update + install (downloads)

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
THROWAWAY_PG: Final = REPO_ROOT / ".local" / "postgres"
DEBIAN_PG_CONF: Final = Path("/etc/postgresql")
DEBIAN_PG_LIB: Final = Path("/usr/lib/postgresql")
SOCKET_PATH_MAX: Final = 100  # a Unix socket path must fit in 107 bytes

INSTALL_REDIS: Final = "install Redis 7 (Debian/Ubuntu: apt-get install redis-server)"
INSTALL_POSTGRES: Final = "install PostgreSQL (Debian/Ubuntu: apt-get install postgresql)"
# The distribution package that provides each service's programs.
PACKAGES: Final = {"redis": "redis-server", "postgres": "postgresql"}


class ConfigError(Exception):
    """The config file or a URL cannot be used; the message names the key."""


class SetupError(Exception):
    """A service is down and this script cannot bring it up; the message says why."""


class NotAnswering(Exception):
    """Nothing answered at the URL (refused, timed out, or still starting up)."""


class Refused(Exception):
    """The server answered but refused us (credentials, permissions)."""


class MissingDatabase(Exception):
    """PostgreSQL answered but the database named in the URL does not exist."""


@dataclass(frozen=True, slots=True)
class Target:
    """One service to check: its display name, URL and the env var that overrides it."""

    name: str
    env: str
    url: str
    host: str | None
    port: int

    @property
    def is_local(self) -> bool:
        return self.host in LOCAL_HOSTS

    @property
    def shown(self) -> str:
        """The URL with its password replaced by ``***``."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        address = parts.netloc.rpartition("@")[2]
        netloc = f"{parts.username or ''}:***@{address}"
        return urlunsplit(parts._replace(netloc=netloc))

    def redact(self, text: str) -> str:
        """Mask the URL and, to be safe, any stray copy of the password in ``text``."""
        text = text.replace(self.url, self.shown)
        password = urlsplit(self.url).password
        if password:
            for secret in {password, unquote(password)}:
                text = text.replace(secret, "***")
        return text


# --- configuration -----------------------------------------------------------------


def load_targets(environ: Mapping[str, str]) -> tuple[Target, Target]:
    config_path = Path(environ.get("ALCHEMY_CONFIG") or "config.toml")
    config = read_config(config_path)
    redis_url = environ.get("REDIS_URL") or config_url(config, config_path, "redis")
    database_url = environ.get("DATABASE_URL") or config_url(config, config_path, "database")
    return (
        parse_target("redis", "REDIS_URL", redis_url or DEFAULT_REDIS_URL, 6379),
        parse_target("postgres", "DATABASE_URL", database_url or DEFAULT_DATABASE_URL, 5432),
    )


def read_config(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc


def config_url(config: Mapping[str, object], path: Path, section: str) -> str | None:
    table = config.get(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"[{section}] in {path} must be a table")
    url = table.get("url")
    if url is not None and not isinstance(url, str):
        raise ConfigError(f"[{section}] url in {path} must be a string")
    return url


URL_SCHEMES: Final = {
    "redis": frozenset({"redis", "rediss", "unix"}),
    "postgres": frozenset({"postgresql", "postgres"}),
}


def parse_target(name: str, env: str, url: str, default_port: int) -> Target:
    parts = urlsplit(url)
    masked = Target(name, env, url, None, default_port).shown
    if parts.scheme not in URL_SCHEMES[name]:
        schemes = ", ".join(f"{scheme}://" for scheme in sorted(URL_SCHEMES[name]))
        raise ConfigError(f"{name} URL {masked} must start with one of {schemes} ({env})")
    try:
        port = parts.port or default_port
    except ValueError as exc:
        raise ConfigError(f"{name} URL {masked} has an invalid port ({env})") from exc
    return Target(name, env, url, parts.hostname, port)


# --- probes: one real connection each ----------------------------------------------


async def probe_redis(target: Target) -> None:
    client = aioredis.from_url(
        target.url, socket_connect_timeout=CHECK_TIMEOUT, socket_timeout=CHECK_TIMEOUT
    )
    try:
        await client.ping()
    except (redis_errors.AuthenticationError, redis_errors.AuthorizationError) as exc:
        raise Refused(str(exc)) from exc
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
        raise NotAnswering(str(exc)) from exc  # includes BusyLoadingError
    except redis_errors.ResponseError as exc:
        raise Refused(str(exc)) from exc  # NOAUTH, WRONGPASS, ...
    finally:
        await client.aclose()


async def probe_postgres(target: Target) -> None:
    try:
        conn = await asyncpg.connect(target.url, timeout=CHECK_TIMEOUT)
    except asyncpg.exceptions.InvalidCatalogNameError as exc:
        raise MissingDatabase(str(exc)) from exc
    except (
        asyncpg.exceptions.CannotConnectNowError,  # starting up / shutting down
        asyncpg.exceptions.PostgresConnectionError,
        asyncpg.InterfaceError,
        OSError,
        TimeoutError,
    ) as exc:
        raise NotAnswering(str(exc) or type(exc).__name__) from exc
    except asyncpg.PostgresError as exc:
        raise Refused(str(exc)) from exc
    try:
        await conn.fetchval("SELECT 1", timeout=CHECK_TIMEOUT)
    finally:
        await conn.close(timeout=CHECK_TIMEOUT)


Probe = Callable[[Target], Awaitable[None]]


async def answers(target: Target, probe: Probe) -> str | None:
    """Return None when the service answers, else why not; raise when it refuses us."""
    try:
        await probe(target)
    except NotAnswering as exc:
        return str(exc)
    except Refused as exc:
        raise SetupError(
            f"{target.name} at {target.shown} answered but refused the connection ({exc}): "
            f"check the credentials in the URL or set {target.env}"
        ) from exc
    return None


async def wait_until_answers(target: Target, probe: Probe, log_hint: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    while True:
        reason = await answers(target, probe)
        if reason is None:
            return
        if loop.time() >= deadline:
            raise SetupError(
                f"{target.name} was started but did not answer at {target.shown} "
                f"within {START_TIMEOUT:.0f} s ({reason}); {log_hint}"
            )
        await asyncio.sleep(POLL_INTERVAL)


def require_local(target: Target, reason: str) -> None:
    if not target.is_local:
        raise SetupError(
            f"{target.name} is not reachable at {target.shown} ({reason}) and that is not "
            f"a local address, so nothing was started: start it there or set {target.env}"
        )


async def run_command(
    cmd: list[str],
    what: str,
    *,
    limit: float = COMMAND_TIMEOUT,
    env: Mapping[str, str] | None = None,
) -> None:
    """Run a short-lived command; raise SetupError with its last output line on failure."""
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=None if env is None else {**os.environ, **env},
    )
    try:
        async with asyncio.timeout(limit):
            output, _ = await proc.communicate()
    except TimeoutError as exc:
        proc.kill()  # our own child, by its pid
        await proc.wait()
        raise SetupError(f"{what} did not return within {limit:.0f} s") from exc
    if proc.returncode != 0:
        lines = [line for line in output.decode(errors="replace").splitlines() if line.strip()]
        last = lines[-1].strip() if lines else "no output"
        raise SetupError(f"{what} failed (exit {proc.returncode}: {shlex.join(cmd)}): {last}")


# --- redis -------------------------------------------------------------------------


async def ensure_redis(target: Target) -> str:
    reason = await answers(target, probe_redis)
    if reason is None:
        return "already running"
    require_local(target, reason)
    binary = shutil.which("redis-server")
    if binary is None:
        raise SetupError(
            f"redis is not reachable at {target.shown} and no redis-server binary was "
            f"found: {INSTALL_REDIS} or set {target.env}"
        )
    bind = "::1" if target.host == "::1" else "127.0.0.1"
    cmd = [binary, "--daemonize", "yes", "--bind", bind, "--port", str(target.port)]
    await run_command([*cmd, "--save", "", "--appendonly", "no"], "redis-server")
    await wait_until_answers(target, probe_redis, "is the port taken by another program?")
    return "started"


# --- postgres ----------------------------------------------------------------------


async def ensure_postgres(target: Target) -> str:
    how = "already running"
    try:
        reason = await answers(target, probe_postgres)
        if reason is not None:
            require_local(target, reason)
            how, log_hint = await start_postgres(target)
            await wait_until_answers(target, probe_postgres, log_hint)
    except MissingDatabase as exc:
        await create_database(target, str(exc))
        how += f"; created database {database_name(target)}"
        if (reason := await answers(target, probe_postgres)) is not None:
            raise SetupError(f"postgres stopped answering at {target.shown} ({reason})") from exc
    return how


async def start_postgres(target: Target) -> tuple[str, str]:
    """Start a local PostgreSQL on the URL's port; return (how, where its log is)."""
    notes: list[str] = []
    cluster = debian_main_cluster(notes)
    if cluster is not None and shutil.which("pg_ctlcluster"):
        version, port = cluster
        if port == target.port:
            cmd = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"]
            await run_command(cmd, "pg_ctlcluster")
            log = f"/var/log/postgresql/postgresql-{version}-main.log"
            return f"started cluster {version}/main", f"see {log}"
        notes.append(f"cluster {version}/main listens on {port}, not {target.port}")
    bindir = find_pg_bindir()
    if bindir is None:
        if not shutil.which("pg_ctlcluster"):
            notes.insert(0, "no pg_ctlcluster")
        notes.append(f"no pg_ctl + initdb in PATH or {DEBIAN_PG_LIB}/*/bin")
        raise SetupError(
            f"postgres is not reachable at {target.shown} and cannot be started here "
            f"({'; '.join(notes)}): {INSTALL_POSTGRES} or set {target.env}"
        )
    place = await start_throwaway_cluster(target, bindir)
    shown = ".local/postgres" if place == THROWAWAY_PG else str(place)
    how = f"started throwaway cluster in {shown}"
    if notes:
        how += f"; {'; '.join(notes)}"
    return how, f"see {place / 'postgres.log'}"


def version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name))


def debian_main_cluster(notes: list[str]) -> tuple[str, int] | None:
    """Return (version, port) of the newest version's ``main`` cluster, if there is one."""
    if not shutil.which("pg_ctlcluster"):
        return None
    versions = [p.name for p in DEBIAN_PG_CONF.glob("*") if version_key(p.name)]
    if not versions:
        notes.append(f"pg_ctlcluster found but {DEBIAN_PG_CONF} has no clusters")
        return None
    version = max(versions, key=version_key)
    conf = DEBIAN_PG_CONF / version / "main" / "postgresql.conf"
    if not conf.is_file():
        notes.append(f"PostgreSQL {version} has no cluster named main in {conf.parent.parent}")
        return None
    match = re.search(r"^\s*port\s*=\s*(\d+)", conf.read_text(errors="replace"), re.MULTILINE)
    return version, int(match.group(1)) if match else 5432


def find_pg_bindir() -> Path | None:
    """A directory holding both ``pg_ctl`` and ``initdb``: PATH first, then Debian's."""
    candidates = [Path(found).resolve().parent for found in [shutil.which("pg_ctl")] if found]
    lib_dirs = sorted(DEBIAN_PG_LIB.glob("*/bin"), key=lambda p: version_key(p.parent.name))
    candidates.extend(reversed(lib_dirs))
    for bindir in candidates:
        if (bindir / "pg_ctl").is_file() and (bindir / "initdb").is_file():
            return bindir
    return None


async def throwaway_place() -> tuple[list[str], Path]:
    """The command prefix for initdb and pg_ctl and the directory of the throwaway cluster.

    initdb and pg_ctl refuse to run as root: as root they run as ``postgres``, and when that
    user cannot reach ``.local/postgres`` (a checkout in root's home, mode 700) the cluster
    lives in ``postgres``'s home instead, one per checkout."""
    THROWAWAY_PG.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return [], THROWAWAY_PG
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError as exc:
        raise SetupError(
            "postgres cannot be started: initdb refuses to run as root and there is no "
            "'postgres' user (create one, or run as a normal user, or set DATABASE_URL)"
        ) from exc
    prefix = ["runuser", "-u", "postgres", "--"]
    os.chown(THROWAWAY_PG, owner.pw_uid, owner.pw_gid)
    try:
        await run_command([*prefix, "test", "-w", str(THROWAWAY_PG)], "test -w")
        return prefix, THROWAWAY_PG
    except SetupError:
        checkout = hashlib.sha256(str(REPO_ROOT).encode()).hexdigest()[:12]
        place = Path(owner.pw_dir) / f"alchemy-throwaway-{checkout}"
        place.mkdir(mode=0o700, exist_ok=True)
        os.chown(place, owner.pw_uid, owner.pw_gid)
        return prefix, place


async def start_throwaway_cluster(target: Target, bindir: Path) -> Path:
    """Start the throwaway cluster; return its directory."""
    prefix, place = await throwaway_place()
    data = place / "data"
    if not (data / "PG_VERSION").is_file():
        user = unquote(urlsplit(target.url).username or "") or "postgres"
        initdb = [str(bindir / "initdb"), "-D", str(data), "-U", user, "--auth=trust"]
        await run_command([*prefix, *initdb, "-E", "UTF8"], "initdb")
        sockets = str(place) if len(str(place)) < SOCKET_PATH_MAX else ""
        with (data / "postgresql.conf").open("a") as conf:
            conf.write("\n# added by scripts/ensure_services.py\n")
            conf.write(f"unix_socket_directories = {quote_literal(sockets)}\n")
    listen = target.host if target.host in {"127.0.0.1", "::1"} else "localhost"
    options = f"-p {target.port} -c listen_addresses={listen}"
    pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(place / "postgres.log")]
    await run_command([*prefix, *pg_ctl, "-o", options, "-w", "-t", "20", "start"], "pg_ctl")
    return place


def quote_literal(text: str) -> str:
    escaped = text.replace("'", "''")
    return f"'{escaped}'"


def quote_ident(name: str) -> str:
    escaped = name.replace('"', '""')
    return f'"{escaped}"'


def database_name(target: Target) -> str:
    return unquote(urlsplit(target.url).path.lstrip("/"))


async def create_database(target: Target, reason: str) -> None:
    name = database_name(target)
    if not target.is_local or not name:
        raise SetupError(f"postgres at {target.shown} answered but {reason}: create it first")
    maintenance_db = "template1" if name == "postgres" else "postgres"
    try:
        conn = await asyncpg.connect(target.url, database=maintenance_db, timeout=CHECK_TIMEOUT)
        try:
            await conn.execute(f"CREATE DATABASE {quote_ident(name)}")
        finally:
            await conn.close(timeout=CHECK_TIMEOUT)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        raise SetupError(
            f"postgres at {target.shown}: {reason} and creating it failed ({exc})"
        ) from exc


# --- installing what is missing ----------------------------------------------------


def is_installed(target: Target) -> bool:
    """Whether this machine has the programs to start ``target``'s service."""
    if target.name == "redis":
        return shutil.which("redis-server") is not None
    return find_pg_bindir() is not None or debian_main_cluster([]) is not None


async def needs_package(target: Target, probe: Probe) -> bool:
    """A local service that does not answer and whose programs are not installed."""
    if not target.is_local or is_installed(target):
        return False
    try:
        return await answers(target, probe) is not None
    except (SetupError, MissingDatabase):
        return False  # something answers there: not ours to install


def apt_command(packages: list[str]) -> str:
    return f"apt-get install -y {' '.join(packages)}"


async def install_packages(packages: list[str]) -> None:
    """``apt-get install`` the packages, as root; else SetupError with the exact command."""
    command = apt_command(packages)
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        where = "as root" if shutil.which("apt-get") else "with the system's package manager"
        raise SetupError(
            f"not installed: {', '.join(packages)}; install {where} ({command}), "
            "or run make as root to have it done"
        )
    print(command, flush=True)
    clusters_before = set(DEBIAN_PG_CONF.glob("*/main"))
    noninteractive = {"DEBIAN_FRONTEND": "noninteractive"}
    await run_command(["apt-get", "update", "-qq"], "apt-get update", limit=APT_TIMEOUT)
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
    await run_command(install, "apt-get install", limit=APT_TIMEOUT, env=noninteractive)
    for cluster in sorted(set(DEBIAN_PG_CONF.glob("*/main")) - clusters_before):
        await drop_new_cluster(cluster.parent.name)


async def drop_new_cluster(version: str) -> None:
    """Debian's package made an empty ``main`` cluster that asks for a password over TCP,
    which the configured URL does not have: drop it, and start the throwaway trust-auth
    cluster as on any machine without one."""
    cmd = ["pg_dropcluster", "--stop", version, "main"]
    await run_command(cmd, "pg_dropcluster")
    print(
        f"postgres: dropped the empty cluster {version}/main the package created (password "
        "authentication over TCP); a throwaway trust-auth cluster is used instead",
        flush=True,
    )


async def install_missing(checks: list[tuple[Target, Probe]]) -> bool:
    """Install the packages of local services that are down and not installed; print one
    line and return False when that cannot be done here."""
    packages = [PACKAGES[t.name] for t, probe in checks if await needs_package(t, probe)]
    if not packages:
        return True
    try:
        await install_packages(packages)
    except SetupError as exc:
        print(f"ensure_services: {exc}", file=sys.stderr, flush=True)
        return False
    return True


# --- main --------------------------------------------------------------------------


async def report(target: Target, ensure: Callable[[Target], Awaitable[str]]) -> bool:
    """Ensure one service and print its one line; return whether it answers."""
    try:
        how = await ensure(target)
    except SetupError as exc:
        print(target.redact(str(exc)), file=sys.stderr, flush=True)
        return False
    print(target.redact(f"{target.name} ok at {target.shown} ({how})"), flush=True)
    return True


async def ensure_all(redis_target: Target, postgres_target: Target) -> int:
    checks: list[tuple[Target, Probe]] = [
        (redis_target, probe_redis),
        (postgres_target, probe_postgres),
    ]
    if not await install_missing(checks):
        return EX_UNAVAILABLE
    results = [
        await report(redis_target, ensure_redis),
        await report(postgres_target, ensure_postgres),
    ]
    return 0 if all(results) else EX_UNAVAILABLE


def main() -> int:
    try:
        redis_target, postgres_target = load_targets(os.environ)
    except ConfigError as exc:
        print(f"ensure_services: {exc}", file=sys.stderr)
        return EX_CONFIG
    return asyncio.run(ensure_all(redis_target, postgres_target))


if __name__ == "__main__":
    sys.exit(main())

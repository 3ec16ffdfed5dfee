"""The SDK packages' re-exports load on first read (alchemy/providers/lazy_exports.py):
the same objects as an eager import, far fewer modules for what a worker uses. Each side
runs in a fresh interpreter, so neither sees the other's imports."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from alchemy.providers.lazy_exports import PACKAGES, read_reexports
from tests.conftest import REDIS_URL

REPO_ROOT = __file__.rsplit("/tests/", 1)[0]

# Prints every re-exported name of every re-export-only SDK package as
# "package.name" -> what it is (a module's name, or an object's module and qualname).
EVERY_EXPORT = textwrap.dedent(
    """
    import importlib, json, pathlib, sys
    LAZY = sys.argv[1] == "lazy"
    if LAZY:
        import alchemy.providers  # installs the finder
    from alchemy.providers.lazy_exports import PACKAGES, read_reexports
    import anthropic, openai

    def describe(value):
        if isinstance(value, type(sys)):
            return "module " + value.__name__
        qualname = getattr(value, "__qualname__", type(value).__name__)
        return f"{getattr(value, '__module__', '?')}.{qualname}"

    out = {}
    for top in PACKAGES:
        root = importlib.import_module(top)
        base = pathlib.Path(root.__file__).parent
        for init in sorted(base.rglob("__init__.py")):
            parts = init.parent.relative_to(base).parts
            name = ".".join((top, *parts))
            table = read_reexports(init.read_text(encoding="utf-8"))
            if table is None:
                continue
            package = importlib.import_module(name)
            for exported in table.names:
                out[name + "." + exported] = describe(getattr(package, exported))
    print(json.dumps(out))
    """
)

# What a worker does with the SDKs before and during its first calls: build the clients
# and warm the three providers; then the modules loaded.
WORKER_USE = textwrap.dedent(
    """
    import json, sys
    import alchemy.providers
    if sys.argv[1] == "eager":
        sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "ReExportFinder"]
    import anthropic, openai
    from alchemy.providers.claude import ClaudeText
    from alchemy.providers.gpt import GptText
    claude = anthropic.AsyncAnthropic(api_key="k", base_url="http://127.0.0.1:9")
    gpt = openai.AsyncOpenAI(api_key="k", base_url="http://127.0.0.1:9")
    ClaudeText(claude, max_tokens=10).warm()
    GptText(gpt, max_tokens=10).warm()
    sdk = [m for m in sys.modules if m.split(".")[0] in ("anthropic", "openai")]
    print(json.dumps({
        "sdk": len(sdk),
        "beta_types": sum(m.startswith("anthropic.types.beta") for m in sdk),
        "loader": type(sys.modules["anthropic.types"].__spec__.loader).__name__,
    }))
    """
)


def run_python(script: str, *args: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_every_reexport_is_the_same_object_as_after_an_eager_import() -> None:
    lazy = run_python(EVERY_EXPORT, "lazy")
    eager = run_python(EVERY_EXPORT, "eager")
    assert len(eager) > 3000  # the four package trees, thousands of names
    assert lazy == eager


def test_a_worker_loads_a_fraction_of_the_sdk_modules() -> None:
    lazy = run_python(WORKER_USE, "lazy")
    eager = run_python(WORKER_USE, "eager")
    assert lazy["loader"] == "ReExportLoader"
    assert eager["loader"] != "ReExportLoader"
    assert lazy["sdk"] < eager["sdk"] * 0.75, (lazy, eager)
    assert lazy["beta_types"] < eager["beta_types"], (lazy, eager)


def test_submodules_read_as_attributes_and_unknown_names_are_attribute_errors() -> None:
    script = textwrap.dedent(
        """
        import sys
        import alchemy.providers
        import anthropic.types as types
        assert types.message.__name__ == "anthropic.types.message"   # a submodule, read
        assert types.Message is types.message.Message
        assert "Message" in dir(types) and "Usage" in dir(types)
        try:
            types.NoSuchThing
        except AttributeError as exc:
            assert "NoSuchThing" in str(exc)
        else:
            raise SystemExit("an unknown name resolved")
        from anthropic.types import Usage, message_param
        assert Usage.__module__ == "anthropic.types.usage"
        assert message_param.__name__ == "anthropic.types.message_param"
        print("{}")
        """
    )
    assert run_python(script) == {}


@pytest.mark.parametrize(
    "source",
    [
        "from .a import *\n",
        "from .a import A\ndef f():\n    pass\n",
        "import typing\nif typing.TYPE_CHECKING:\n    from .a import A\n",
        "from .a import A\n__all__ = names()\n",
        "from .a import A\nA.model_rebuild()\n",
        "from pkg.a import A\n",
    ],
)
def test_a_package_that_does_more_than_reexport_runs_as_written(source: str) -> None:
    assert read_reexports(source) is None


def test_a_reexport_only_init_reads_as_a_table() -> None:
    source = textwrap.dedent(
        '''
        """Docs."""
        from __future__ import annotations
        from . import shared
        from .a import A as A, B
        from .c import C as Renamed
        __all__ = ["A", "B", "Renamed"]
        '''
    )
    table = read_reexports(source)
    assert table is not None
    assert table.names == {
        "shared": (None, "shared"),
        "A": ("a", "A"),
        "B": ("a", "B"),
        "Renamed": ("c", "C"),
    }
    assert table.all == ("A", "B", "Renamed")
    assert set(PACKAGES) == {
        "anthropic.types",
        "anthropic.resources",
        "openai.types",
        "openai.resources",
    }


def test_the_worker_keeps_trio_out_even_when_it_is_installed() -> None:
    script = textwrap.dedent(
        """
        import importlib.util, json
        installed = importlib.util.find_spec("trio") is not None
        from alchemy.lean import keep_out_trio
        keep_out_trio()
        from httpcore2 import _synchronization
        print(json.dumps({"installed": installed, "trio": _synchronization.trio is not None}))
        """
    )
    result = run_python(script)
    assert result["trio"] is False
    assert result["installed"] is True  # selenium (a test dependency) brings it


def test_the_worker_keeps_opentelemetry_metrics_out_and_the_sdks_still_trace() -> None:
    script = textwrap.dedent(
        """
        import json, sys
        from alchemy.lean import keep_out_otel_metrics
        keep_out_otel_metrics()
        from redis.observability import metrics
        import anthropic, openai
        from anthropic import _tracing
        print(json.dumps({
            "redis_otel": metrics.OTEL_AVAILABLE,
            "trace": "opentelemetry.trace" in sys.modules,
            "tracer": type(_tracing.trace.get_tracer("t")).__name__,
        }))
        """
    )
    result = run_python(script)
    assert result["redis_otel"] is False  # redis-py took its not-installed branch
    assert result["trace"] is True  # the Anthropic SDK's tracing imports as before
    assert result["tracer"]


# What ``python -m alchemy --help`` does before it exits (alchemy/__main__.py runs first);
# a script goes on from there. Its first argument is kept in ``url``.
AS_PYTHON_M_ALCHEMY = textwrap.dedent(
    """
    import contextlib, io, runpy, sys
    url = sys.argv[1] if len(sys.argv) > 1 else ""
    sys.argv[1:] = ["--help"]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            runpy.run_module("alchemy", run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    """
)


def test_python_m_alchemy_keeps_opentelemetry_metrics_out() -> None:
    script = AS_PYTHON_M_ALCHEMY + textwrap.dedent(
        """
        import json, sys
        from redis.asyncio import Redis
        from redis.observability import metrics
        print(json.dumps({
            "redis_otel": metrics.OTEL_AVAILABLE,
            "api": "opentelemetry.metrics._internal" in sys.modules,
        }))
        """
    )
    result = run_python(script)
    assert result == {"redis_otel": False, "api": False}


def test_package_metadata_loads_on_first_read_and_clients_still_name_themselves() -> None:
    """``python -m alchemy`` gives ``importlib.metadata`` a lazy stand-in: building the
    worker's Redis clients and talking to Redis does not load it, the clients still name
    themselves redis-py and its version (CLIENT SETINFO, Redis 7.2+), and the first read
    loads the real module."""
    script = AS_PYTHON_M_ALCHEMY + textwrap.dedent(
        """
        import asyncio, json, sys
        import redis
        from alchemy.config import parse_config
        from alchemy.worker.connections import RedisClients

        async def client_info():
            config = parse_config({"redis": {"url": url}})
            async with RedisClients(config.redis) as clients:
                assert await clients.shared.ping()
                await clients.blocking().ping()
                driver = clients.shared.connection_pool.connection_kwargs["driver_info"]
            return driver.name, driver.lib_version

        name, version = asyncio.run(client_info())
        lazy = type(sys.modules["importlib.metadata"]).__name__
        import importlib.metadata
        print(json.dumps({
            "lazy_after_clients": lazy,
            "client": [name, version, redis.__version__],
            "read": importlib.metadata.version("redis"),
            "loaded": type(sys.modules["importlib.metadata"]).__name__,
        }))
        """
    )
    result = run_python(script, REDIS_URL)
    assert result["lazy_after_clients"] == "_LazyModule"
    name, version, installed = result["client"]
    assert (name, version) == ("redis-py", installed)
    assert result["read"] == installed  # the stand-in loads on first read
    assert result["loaded"] == "module"

"""``python -m alchemy job`` as an operator runs it, against the test's Redis and prefix."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.conftest import REDIS_URL, REPO, build_config_dict, to_toml


async def alchemy_job(tmp_path: Path, prefix: str, queue: str, *args: str) -> tuple[int, str]:
    """Exit status and output (stdout, then stderr) of ``alchemy job QUEUE ARGS...``."""
    path = tmp_path / "job-cli.toml"
    path.write_text(to_toml(build_config_dict(prefix, {queue: {"handler": "m:f"}})))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALCHEMY_")}
    env["REDIS_URL"] = REDIS_URL
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "alchemy",
        "--config",
        str(path),
        "job",
        queue,
        *args,
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()

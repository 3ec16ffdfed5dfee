"""scripts/ensure_services.py on a machine without Redis, run by someone who may not install
it: one line with the exact apt-get command, exit 69. (As root it installs the packages:
scripts/try-first-run.sh shows that on a clean Debian 12, too slow for the suite.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from tests.fakes.postgres import ADMIN_URL
from tests.ports import free_port


def as_non_root() -> list[str]:
    """As root: a user namespace without a mapping (``os.geteuid()`` is 65534 there, files
    are still reached as their owner); otherwise nothing to do."""
    if os.geteuid() != 0:
        return []
    unshare = shutil.which("unshare")
    assert unshare is not None, "unshare (util-linux) is needed to run this as root"
    return [unshare, "--user", "--"]


def test_without_redis_and_without_root_it_prints_the_command_and_exits_69(
    tmp_path: Path,
) -> None:
    # A PATH with apt-get but no redis-server: a Debian machine where it is not installed.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    apt_get = shutil.which("apt-get")
    if apt_get is not None:
        (bin_dir / "apt-get").symlink_to(apt_get)
    env = {
        "PATH": str(bin_dir),
        "HOME": str(tmp_path),
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        "DATABASE_URL": ADMIN_URL,  # answers
        "ALCHEMY_CONFIG": str(tmp_path / "none.toml"),
    }
    done = subprocess.run(
        [*as_non_root(), sys.executable, str(REPO / "scripts" / "ensure_services.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 69, done
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1, done.stderr
    where = "as root" if apt_get else "with the system's package manager"
    assert done.stderr == (
        f"ensure_services: not installed: redis-server; install {where}"
        " (apt-get install -y redis-server), or run make as root to have it done\n"
    )

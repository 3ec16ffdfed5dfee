"""The load test runs in the default suite; ``-m "not load"`` leaves it out."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "load: bounded loopback load test (50,000 jobs, 3 processes, ~30 s)"
    )

"""Every picture the docs show is in the repository, and the dashboard has one."""

from __future__ import annotations

import re

from tests.conftest import REPO

IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def test_every_image_the_docs_show_exists() -> None:
    shown = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in IMAGE.findall(page.read_text()):
            path = (page.parent / target).resolve()
            assert path.is_file(), f"{page.name} shows {target}, which is missing"
            assert path.read_bytes().startswith(b"\x89PNG"), target
            shown.append(path.name)
    assert "dashboard.png" in shown

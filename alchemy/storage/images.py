"""Image bytes measured and downscaled locally (Pillow), off the event loop's thread."""

from __future__ import annotations

import io


def downscale_sync(data: bytes, longest_edge: int) -> tuple[bytes, int, int]:
    """A PNG copy with its longest side ``longest_edge`` (never enlarged), and its size."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.thumbnail((longest_edge, longest_edge))
        out = io.BytesIO()
        image.save(out, format="PNG", optimize=True)
        return out.getvalue(), image.width, image.height


def dimensions_sync(data: bytes) -> tuple[int, int] | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.width, image.height
    except (UnidentifiedImageError, OSError):
        return None

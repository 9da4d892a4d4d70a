"""Thumbnails with Pillow: JPEG decoded at reduced size (draft mode), decompression bombs refused, EXIF applied."""

from __future__ import annotations

import io
import tempfile
import warnings
from typing import TYPE_CHECKING

from PIL import Image, ImageOps

from chat4all.ports import Thumbnailer

if TYPE_CHECKING:
    from collections.abc import Iterable

THUMBNAIL_SIZE = (320, 320)
# far below Pillow's default (about 89 million): a 40-megapixel photo is the largest image thumbnailed; beyond it
# Pillow warns (DecompressionBombWarning, made an error here) and at twice it refuses (DecompressionBombError)
MAX_IMAGE_PIXELS = 40_000_000
SPOOL_BYTES = 8 * 1024 * 1024  # an image larger than this waits on disk (/tmp), not in memory


class PillowThumbnailer(Thumbnailer):
    def __init__(self, size: tuple[int, int] = THUMBNAIL_SIZE, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
        self.size = size
        self.max_pixels = max_pixels

    def thumbnail(self, chunks: Iterable[bytes]) -> bytes:
        Image.MAX_IMAGE_PIXELS = self.max_pixels
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            for chunk in chunks:
                spool.write(chunk)
            spool.seek(0)
            try:
                with Image.open(spool) as image:
                    image.thumbnail(self.size)  # JPEG: draft mode, decoded at 1/2, 1/4 or 1/8 of its size
                    small = ImageOps.exif_transpose(image)
                    if small.mode not in ("RGB", "L"):
                        small = small.convert("RGBA")
                        flat = Image.new("RGB", small.size, (255, 255, 255))
                        flat.paste(small, mask=small.getchannel("A"))
                        small = flat
                    out = io.BytesIO()
                    small.save(out, "JPEG", quality=80)
            except (OSError, Image.DecompressionBombError, Image.DecompressionBombWarning, SyntaxError) as exc:
                raise ValueError(f"not an image that may be decoded: {type(exc).__name__}") from exc
        return out.getvalue()

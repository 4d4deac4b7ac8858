"""Reading images the way annotation tools see them: upright (EXIF applied), RGB, bounded size."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

# EXIF orientations 5-8 rotate by 90 degrees, so width and height trade places.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
"""The file suffixes the kit reads as images (Pillow decodes each): in labelme folders, export
check folders, uploads and the legacy routes' folders."""

_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112


def image_size_of(source: str | Path | BinaryIO) -> tuple[int, int]:
    """Upright ``(width, height)`` of an image, decoding it fully so a truncated file fails here.

    Raises:
        OSError / ValueError / SyntaxError: not an image, or a damaged one.
        PIL.Image.DecompressionBombError: more pixels than PIL's safety limit.
    """
    with Image.open(source) as img:
        img.load()
        width, height = img.size
        if img.getexif().get(_EXIF_ORIENTATION) in _TRANSPOSED_ORIENTATIONS:
            width, height = height, width
    return width, height


def load_rgb(source: str | Path | BinaryIO) -> np.ndarray:
    """An image as an upright ``(H, W, 3)`` uint8 RGB array (grey, RGBA, 16-bit and palettes converted)."""
    with Image.open(source) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16/32-bit grey: scale to 8 bits instead of clipping, so the picture stays visible
            arr = np.asarray(img, dtype=np.float64)
            top = arr.max() if arr.size and arr.max() > 0 else 1.0
            img = Image.fromarray((arr * (255.0 / top)).astype(np.uint8))
        return np.array(img.convert("RGB"))  # a writable copy

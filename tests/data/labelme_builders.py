"""Builders for small labelme datasets written by the tests themselves."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

def polygon(label, points, group_id=None, shape_type="polygon"):
    return {"label": label, "points": [list(map(float, p)) for p in points], "group_id": group_id,
            "description": "", "shape_type": shape_type, "flags": {}, "mask": None}


def square(label, x, y, size, group_id=None):
    return polygon(label, [(x, y), (x + size, y), (x + size, y + size), (x, y + size)], group_id)


def jpeg_bytes(width=64, height=48, seed=0):
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    return buf.getvalue()


def write_labelme(folder: Path, stem: str, shapes, width=64, height=48, image="file", raw_json=None):
    """Writes ``stem.json`` (and ``stem.jpg`` when image == "file"; embedded when "embedded")."""
    folder.mkdir(parents=True, exist_ok=True)
    data_bytes = jpeg_bytes(width, height, seed=len(stem))
    if image == "file":
        (folder / f"{stem}.jpg").write_bytes(data_bytes)
    doc = {"version": "5.2.1", "flags": {}, "shapes": shapes, "imagePath": f"{stem}.jpg",
           "imageData": base64.b64encode(data_bytes).decode() if image == "embedded" else None,
           "imageHeight": height, "imageWidth": width}
    path = folder / f"{stem}.json"
    path.write_text(raw_json if raw_json is not None else json.dumps(doc))
    return path

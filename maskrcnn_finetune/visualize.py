"""Pictures a person looks at: annotated sample grids (and, later, prediction overlays)."""

from __future__ import annotations

import contextlib
import io
import logging
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; notebooks display the PNGs
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402

from maskrcnn_finetune.data.images import load_rgb  # noqa: E402

logger = logging.getLogger(__name__)


def class_colors(n: int) -> np.ndarray:
    """``n`` distinct RGB colours in [0, 1], stable for a given class index."""
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return np.array([cmap(i % cmap.N)[:3] for i in range(n)])


def draw_coco_samples(json_path, out_png, n: int = 12, seed: int = 0, columns: int = 4, alpha: float = 0.45) -> Path:
    """Draws a grid of annotated images from a COCO json (masks, boxes, class names) to a PNG.

    Args:
        json_path: COCO json whose ``file_name`` entries are relative to its folder.
        out_png: where the PNG goes.
        n: how many images to show at most (chosen at random, reproducibly for ``seed``).
        columns: images per row.
        alpha: mask opacity.

    Returns:
        The PNG's path.
    """
    json_path, out_png = Path(json_path), Path(out_png)
    coco = _quiet_coco(json_path)
    image_ids = sorted(coco.getImgIds())
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(image_ids, size=min(n, len(image_ids)), replace=False).tolist())
    cat_ids = sorted(coco.getCatIds())
    colors = dict(zip(cat_ids, class_colors(len(cat_ids))))
    rows = max(1, math.ceil(len(chosen) / columns))
    cols = min(columns, len(chosen))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image_id in zip(axes.flat, chosen):
        info = coco.imgs[image_id]
        image = load_rgb(json_path.parent / info["file_name"]).astype(np.float64) / 255.0
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=None))
        for ann in anns:
            mask = coco.annToMask(ann).astype(bool)
            image[mask] = (1 - alpha) * image[mask] + alpha * colors[ann["category_id"]]
        ax.imshow(image)
        for ann in anns:
            x, y, w, h = ann["bbox"]
            color = colors[ann["category_id"]]
            ax.add_patch(plt.Rectangle((x, y), w, h, fill=False, edgecolor=color, linewidth=1.2))
            ax.text(x, y, coco.cats[ann["category_id"]]["name"], fontsize=7, color="white",
                    bbox={"facecolor": color, "alpha": 0.8, "pad": 1, "linewidth": 0}, va="bottom")
        ax.set_title(f"{Path(info['file_name']).name} ({len(anns)})", fontsize=8)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    logger.info("sample grid drawn to %s", out_png)
    return out_png


def _quiet_coco(json_path: Path) -> COCO:
    """pycocotools' COCO without its prints on stdout."""
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(json_path))

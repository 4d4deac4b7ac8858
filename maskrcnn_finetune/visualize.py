"""Pictures a person looks at: annotated sample grids, training curves, comparisons, prediction overlays.

Figures are drawn with :class:`matplotlib.figure.Figure` straight to PNG files (notebooks display
the files): importing this module leaves pyplot and the user's backend as they are.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from pycocotools.coco import COCO

from maskrcnn_finetune.data.images import load_rgb

logger = logging.getLogger(__name__)


def class_colors(n: int) -> np.ndarray:
    """``n`` distinct RGB colours in [0, 1], stable for a given class index."""
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
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
    fig = Figure(figsize=(4 * cols, 3.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
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
            ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor=color, linewidth=1.2))
            ax.text(x, y, coco.cats[ann["category_id"]]["name"], fontsize=7, color="white",
                    bbox={"facecolor": color, "alpha": 0.8, "pad": 1, "linewidth": 0}, va="bottom")
        ax.set_title(f"{Path(info['file_name']).name} ({len(anns)})", fontsize=8)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    logger.info("sample grid drawn to %s", out_png)
    return out_png


def _quiet_coco(json_path: Path) -> COCO:
    """pycocotools' COCO without its prints on stdout."""
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(json_path))


def plot_training_curves(metrics_jsonl, out_png) -> Path | None:
    """Loss curves (total and parts) and validation AP50 per iteration, drawn from ``metrics.jsonl``.

    Returns:
        The PNG's path, or None when there is nothing to draw yet.
    """
    import json

    metrics_jsonl, out_png = Path(metrics_jsonl), Path(out_png)
    if not metrics_jsonl.is_file():
        return None
    records = [json.loads(line) for line in metrics_jsonl.read_text().splitlines() if line.strip()]
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "segm_AP50" in r]
    if not train and not evals:
        return None
    fig = Figure(figsize=(11, 4))
    ax_loss, ax_ap = fig.subplots(1, 2)
    if train:
        iters = [r["iter"] for r in train]
        ax_loss.plot(iters, [r["loss"] for r in train], label="total", linewidth=2, color="black")
        for key in sorted(k for k in train[-1] if k.startswith("loss_")):
            ax_loss.plot(iters, [r.get(key, np.nan) for r in train], label=key[5:], linewidth=1)
        ax_loss.set_yscale("log")
    ax_loss.set(title="training loss", xlabel="iteration")
    ax_loss.legend(fontsize=8)
    if evals:
        iters = [r["iter"] for r in evals]
        ax_ap.plot(iters, [r["bbox_AP50"] for r in evals], "o-", label="box AP50")
        ax_ap.plot(iters, [r["segm_AP50"] for r in evals], "s-", label="mask AP50")
        ax_ap.plot(iters, [r["segm_AP"] for r in evals], "^--", label="mask AP")
        ax_ap.legend(fontsize=8)
    ax_ap.set(title="validation", xlabel="iteration", ylim=(0, 1))
    ax_ap.grid(alpha=0.3)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    return out_png


def plot_backbone_comparison(rows: list[dict], out_png) -> Path:
    """Bar chart of mask/box AP50 (val) and ms per image for each backbone."""
    out_png = Path(out_png)
    names = [r["backbone"] for r in rows]
    x = np.arange(len(rows))
    fig = Figure(figsize=(max(8, 2.2 * len(rows)), 4))
    ax_ap, ax_ms = fig.subplots(1, 2)
    ax_ap.bar(x - 0.2, [r.get("val_box_AP50", 0) for r in rows], 0.4, label="box AP50")
    ax_ap.bar(x + 0.2, [r.get("val_mask_AP50", 0) for r in rows], 0.4, label="mask AP50")
    ax_ap.set(xticks=x, title="accuracy (val)", ylim=(0, 1))
    ax_ap.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    ax_ap.legend(fontsize=8)
    ax_ms.bar(x, [r["ms_per_image"] for r in rows], 0.6, color="tab:gray")
    ax_ms.set(xticks=x, title=f"ms per image ({rows[0]['device'] if rows else ''})")
    ax_ms.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    return out_png


def plot_rounds(rounds: dict[str, dict], out_png) -> Path:
    """Bar chart of box and mask AP / AP50 of several models on the same json (e.g. before and after
    a round of corrections): ``rounds`` maps a name to :func:`~maskrcnn_finetune.evaluate.evaluate_predictor`'s metrics."""
    out_png = Path(out_png)
    names = list(rounds)
    keys = [("bbox", "AP50"), ("segm", "AP50"), ("bbox", "AP"), ("segm", "AP")]
    x = np.arange(len(keys))
    width = 0.8 / max(len(names), 1)
    fig = Figure(figsize=(7, 3.6))
    ax = fig.subplots()
    for k, name in enumerate(names):
        values = [rounds[name][kind][metric] for kind, metric in keys]
        bars = ax.bar(x + (k - (len(names) - 1) / 2) * width, values, width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set(xticks=x, ylim=(0, 1.05), title="the same validation images")
    ax.set_xticklabels([f"{'box' if kind == 'bbox' else 'mask'} {metric}" for kind, metric in keys])
    ax.legend(fontsize=8)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    return out_png


def draw_instances(image: np.ndarray, instances, alpha: float = 0.5, show_boxes: bool = True,
                   show_labels: bool = True, remove_colors: bool = False) -> np.ndarray:
    """The image with each instance's mask tinted in its class colour, its box and its label.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        instances: :class:`~maskrcnn_finetune.structures.Instances` for that image.
        alpha: mask opacity.
        remove_colors: draw on a grey copy of the image (the masks keep their colours), so that
            they stand out on colourful photos (detectron2's ``ColorMode.IMAGE_BW``).

    Returns:
        A new ``(H, W, 3)`` uint8 RGB array.
    """
    from PIL import Image, ImageDraw

    colors = (class_colors(len(instances.class_names)) * 255).astype(np.float64)
    if remove_colors:  # ITU-R 601 luma, as PIL's convert("L")
        grey = np.asarray(Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("L"))
        out = np.repeat(grey[..., None], 3, axis=2)
    else:
        out = np.array(image, dtype=np.uint8, copy=True)
    for k in np.argsort(-instances.scores)[::-1]:  # the best instance is drawn last, on top
        # blend inside the mask's extent only, in float32: the server draws this on every request,
        # and a whole-image float64 copy with boolean indexing took longer than encoding the PNG
        extent = _mask_extent(instances.masks[k])
        if extent is None:
            continue
        region = out[extent]
        blended = region * np.float32(1 - alpha)
        blended += (alpha * colors[instances.class_ids[k]]).astype(np.float32)
        np.clip(blended, 0, 255, out=blended)
        np.copyto(region, blended, where=instances.masks[k][extent][..., None], casting="unsafe")
    canvas = Image.fromarray(out)
    draw = ImageDraw.Draw(canvas)
    for k in range(len(instances)):
        color = tuple(int(c) for c in colors[instances.class_ids[k]])
        x0, y0, x1, y1 = (float(v) for v in instances.boxes[k])
        if show_boxes:
            draw.rectangle([x0, y0, x1, y1], outline=color, width=2)
        if show_labels:
            text = f"{instances.class_names[instances.class_ids[k]]} {instances.scores[k]:.2f}"
            left, top, right, bottom = draw.textbbox((x0, y0), text)
            ty = max(0.0, y0 - (bottom - top) - 2)
            draw.rectangle([x0, ty, x0 + (right - left) + 4, ty + (bottom - top) + 2], fill=color)
            draw.text((x0 + 2, ty), text, fill=(255, 255, 255))
    return np.asarray(canvas)


def _mask_extent(mask: np.ndarray) -> tuple[slice, slice] | None:
    """The rows and columns that hold a mask's pixels, as slices; None for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if len(rows) == 0:
        return None
    y0, y1 = rows[0], rows[-1] + 1
    cols = np.flatnonzero(mask[y0:y1].any(axis=0))
    return slice(y0, y1), slice(cols[0], cols[-1] + 1)


def draw_predictions_grid(predictor, image_paths: list, out_png, threshold: float | None = None, columns: int = 4) -> Path:
    """Predictions on several images side by side, drawn to a PNG (e.g. the val images after training)."""
    from maskrcnn_finetune.data.images import load_rgb

    out_png = Path(out_png)
    rows = max(1, math.ceil(len(image_paths) / columns))
    cols = max(1, min(columns, len(image_paths)))
    fig = Figure(figsize=(4 * cols, 3.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, path in zip(axes.flat, image_paths):
        image = load_rgb(path)
        instances = predictor(image, threshold=threshold)
        ax.imshow(draw_instances(image, instances))
        ax.set_title(f"{Path(path).name}: {len(instances)} found", fontsize=8)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    return out_png


def mask_image(mask: np.ndarray) -> np.ndarray:
    """A binary mask as a ``(H, W)`` uint8 picture of 0 and 255 (what a mask PNG holds)."""
    return mask.astype(np.uint8) * 255


def crop_instance(image: np.ndarray, mask: np.ndarray, box) -> np.ndarray:
    """One instance cut out of the image: its box, RGBA, the pixels outside its mask transparent.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        mask: ``(H, W)`` bool, the instance's mask.
        box: ``x0, y0, x1, y1`` in pixels; a degenerate box falls back to the mask's extent.

    Returns:
        ``(h, w, 4)`` uint8; ``(1, 1, 4)`` transparent for an empty mask and box.
    """
    height, width = mask.shape
    x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x1, y1 = min(width, int(np.ceil(box[2]))), min(height, int(np.ceil(box[3])))
    if x1 <= x0 or y1 <= y0:
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            return np.zeros((1, 1, 4), dtype=np.uint8)
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    return np.dstack([image[y0:y1, x0:x1], mask_image(mask[y0:y1, x0:x1])])

"""Backbone comparison: the same data and schedule for several backbones, one table and one chart."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

from maskrcnn_finetune.config import TrainConfig
from maskrcnn_finetune.data.coco import load_coco
from maskrcnn_finetune.engines import train
from maskrcnn_finetune.evaluate import evaluate_predictor
from maskrcnn_finetune.model_dir import MODEL_JSON
from maskrcnn_finetune.modeling.complexity import count_gmacs, count_parameters
from maskrcnn_finetune.loading import load_predictor
from maskrcnn_finetune.timing import measure_latency

logger = logging.getLogger(__name__)


def compare_backbones(base: TrainConfig, backbones: list[str], out_dir, test_json: str | None = None,
                      timing_images: int = 5) -> list[dict]:
    """Trains and evaluates each backbone with ``base``'s options; a finished folder is reused.

    Args:
        base: the shared training options (its ``output_dir`` is replaced per backbone).
        backbones: registry names.
        out_dir: gets one model folder per backbone, ``comparison.md`` and ``comparison.png``.
        test_json: an optional held-out COCO json reported beside val.
        timing_images: val images timed (after warm-up) for ms per image.

    Returns:
        One row per backbone: params, GMACs, ms per image, box/mask AP50 on val (and test).
    """
    out_dir = Path(out_dir)
    rows = []
    for name in backbones:
        model_dir = out_dir / name
        cfg = replace(base, backbone=name, output_dir=str(model_dir))
        if (model_dir / MODEL_JSON).is_file():
            logger.info("%s: reusing the finished run in %s", name, model_dir)
        else:
            cfg = replace(cfg, resume=True)  # continues an interrupted comparison
            train(cfg)
        predictor = load_predictor(model_dir, device=base.device)
        val = load_coco(base.val_json)
        row = {
            "backbone": name,
            "params_M": count_parameters(predictor.model) / 1e6,
            "gmacs": count_gmacs(predictor.model, base.image_size, int(round(base.image_size * 4 / 3))),
            "device": str(predictor.device),
        }
        images = [val.image_path(img) for img in val.images[:timing_images]]
        row["ms_per_image"] = measure_latency(predictor, images, warmup=2)["median_ms"]
        for split, json_path in (("val", base.val_json), ("test", test_json)):
            if not json_path:
                continue
            metrics = evaluate_predictor(predictor, json_path)
            row[f"{split}_box_AP50"] = metrics["bbox"]["AP50"]
            row[f"{split}_mask_AP50"] = metrics["segm"]["AP50"]
        rows.append(row)
        logger.info("%s: %s", name, row)
    (out_dir / "comparison.json").write_text(json.dumps(rows, indent=2))
    (out_dir / "comparison.md").write_text(format_comparison(rows, base) + "\n")
    from maskrcnn_finetune.visualize import plot_backbone_comparison

    plot_backbone_comparison(rows, out_dir / "comparison.png")
    return rows


def format_comparison(rows: list[dict], base: TrainConfig | None = None) -> str:
    """The table users know from older kits, as Markdown."""
    has_test = any("test_mask_AP50" in r for r in rows)
    header = ["model", "params (M)", "GMACs", "ms / image", "box AP50 (val)", "mask AP50 (val)"]
    if has_test:
        header += ["box AP50 (test)", "mask AP50 (test)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["backbone"], f"{r['params_M']:.1f}", f"{r['gmacs']:.1f}", f"{r['ms_per_image']:.0f}",
                 f"{r.get('val_box_AP50', float('nan')):.3f}", f"{r.get('val_mask_AP50', float('nan')):.3f}"]
        if has_test:
            cells += [f"{r.get('test_box_AP50', float('nan')):.3f}", f"{r.get('test_mask_AP50', float('nan')):.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if base is not None:
        lines.append("")
        lines.append(f"Same schedule for all: {base.max_iter or base.epochs} {'iterations' if base.max_iter else 'epochs'}, "
                     f"batch {base.batch_size}, lr {base.lr}, short side {base.image_size} px, "
                     f"pretrained {base.pretrained}; time on {rows[0]['device'] if rows else '?'} after warm-up (median).")
    return "\n".join(lines)

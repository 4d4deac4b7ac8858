"""Summaries of a converted dataset that a person reads: the per-class table."""

from __future__ import annotations

from collections import defaultdict


def class_counts(coco: dict) -> dict[str, tuple[int, int]]:
    """``{class name: (images containing it, instances)}`` for one COCO dict, in category order."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    images: dict[int, set] = defaultdict(set)
    instances: dict[int, int] = defaultdict(int)
    for ann in coco["annotations"]:
        images[ann["category_id"]].add(ann["image_id"])
        instances[ann["category_id"]] += 1
    return {names[cid]: (len(images[cid]), instances[cid]) for cid in sorted(names)}


def format_class_table(cocos: dict[str, dict]) -> str:
    """A Markdown table: one row per class, images and instances per split, and a total row.

    Args:
        cocos: ``{split name: COCO dict}``, e.g. ``{"train": ..., "val": ...}``.
    """
    splits = list(cocos)
    counts = {s: class_counts(c) for s, c in cocos.items()}
    names = []
    for s in splits:
        names += [n for n in counts[s] if n not in names]
    header = ["class"] + [f"{s} {what}" for s in splits for what in ("images", "instances")]
    rows = [header, ["---"] * len(header)]
    for name in names:
        row = [name]
        for s in splits:
            n_img, n_inst = counts[s].get(name, (0, 0))
            row += [str(n_img), str(n_inst)]
        rows.append(row)
    total = ["total"]
    for s in splits:
        total += [str(len(cocos[s]["images"])), str(len(cocos[s]["annotations"]))]
    rows.append(total)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("| " + " | ".join(cell.ljust(w) for cell, w in zip(r, widths)) + " |" for r in rows)

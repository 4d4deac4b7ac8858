"""labelme folders -> COCO json files: splitting, copying images, writing the json.

Reading and validating the labelme files is :mod:`maskrcnn_finetune.data.labelme`; this module
turns what it read into COCO: one json per split, the images copied beside it so that the
``file_name`` entries stay valid wherever the folder is moved.
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
from tqdm.auto import tqdm

from maskrcnn_finetune.files import write_json_atomic
from maskrcnn_finetune.data.labelme import IGNORED_LABELS, LabelmeFile, load_labelme_folder, rasterize
from maskrcnn_finetune.data.report import format_class_table
from maskrcnn_finetune.errors import ConfigError, DatasetError

logger = logging.getLogger(__name__)


@dataclass
class ConversionResult:
    """What a conversion wrote: one COCO json per split, and the class table to show."""

    out_dir: Path
    json_paths: dict[str, Path]
    class_names: list[str]
    table: str
    warnings: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _outputs_of(out_dir: Path) -> list[Path]:
    """What a conversion writes into ``out_dir``: never to be read back as labelme input."""
    return [out_dir / "images"] + [out_dir / f"{split}.json" for split in ("train", "val", "dataset")]


def build_coco(
    files: list[LabelmeFile],
    class_names: list[str],
    out_dir: Path,
    image_subdir: str = "images",
    first_image_id: int = 1,
    description: str = "",
) -> dict:
    """Writes the images of ``files`` under ``out_dir/image_subdir`` and returns their COCO dict.

    Image file names in the result are relative to ``out_dir`` (where the json goes), so the
    folder can be moved as a whole. Category ids start at 1 in ``class_names`` order.
    """
    category_ids = {name: i + 1 for i, name in enumerate(class_names)}
    images, annotations = [], []
    for offset, record in enumerate(tqdm(files, desc=f"Writing {image_subdir}", unit="image", disable=len(files) < 20)):
        image_id = first_image_id + offset
        rel_image = _output_image_name(record, image_subdir)
        _place_image(record, out_dir / rel_image)
        images.append({"id": image_id, "file_name": rel_image, "width": record.width, "height": record.height})
        for inst in record.instances:
            mask = rasterize(inst.polygons, record.width, record.height)
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_ids[inst.label],
                    "segmentation": [[round(float(v), 2) for v in p.reshape(-1)] for p in inst.polygons],
                    "area": float(mask_utils.area(rle)),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": 0,
                }
            )
    return {
        "info": {"description": description, "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": n, "supercategory": ""} for n, i in category_ids.items()],
    }


def _output_image_name(record: LabelmeFile, image_subdir: str) -> str:
    stem = Path(record.rel_name).with_suffix("")
    suffix = record.image_path.suffix if record.image_path is not None else record.image_suffix
    return f"{image_subdir}/{stem.as_posix()}{suffix}"


def _place_image(record: LabelmeFile, dest: Path) -> None:
    """Copies (or writes the embedded) image to ``dest``, skipping an identical copy."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if record.image_path is not None:
        src = record.image_path
        if dest.exists() and dest.stat().st_size == src.stat().st_size and dest.stat().st_mtime >= src.stat().st_mtime:
            return
        shutil.copy2(src, dest)
    else:
        dest.write_bytes(record.image_bytes)


def split_files(files: list[LabelmeFile], val_fraction: float, seed: int) -> dict[str, list[LabelmeFile]]:
    """Splits files at random (reproducibly for a seed) into train and val."""
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"--val-fraction must be at least 0 and below 1, got {val_fraction}; 0.2 is typical")
    if val_fraction == 0:
        return {"dataset": list(files)}
    if len(files) < 2:
        raise DatasetError(
            f"only {len(files)} annotated image(s): too few to hold some out for validation; "
            "annotate more images or pass --val-fraction 0"
        )
    order = np.random.default_rng(seed).permutation(len(files))
    n_val = min(len(files) - 1, max(1, round(len(files) * val_fraction)))
    val_idx = set(order[:n_val].tolist())
    return {
        "train": [f for i, f in enumerate(files) if i not in val_idx],
        "val": [f for i, f in enumerate(files) if i in val_idx],
    }


def _prepare_out_dir(source_dirs: list[Path], out_dir: Path) -> None:
    for source in source_dirs:
        if out_dir.resolve() == source.resolve():
            raise DatasetError(
                f"the output folder '{out_dir}' is the labelme folder itself; choose a separate output folder "
                "so that the annotations are never overwritten"
            )
    out_dir.mkdir(parents=True, exist_ok=True)


def _write_splits(
    splits: dict[str, list[LabelmeFile]], class_names: list[str], out_dir: Path, source: str, per_split_images: bool
) -> tuple[dict[str, Path], dict[str, dict]]:
    json_paths, cocos = {}, {}
    next_id = 1
    for split, files in splits.items():
        subdir = f"images/{split}" if per_split_images else "images"
        coco = build_coco(files, class_names, out_dir, subdir, first_image_id=next_id, description=f"{split} split of {source}")
        next_id += len(files)
        path = out_dir / f"{split}.json"
        write_json_atomic(path, coco)
        json_paths[split], cocos[split] = path, coco
    for split, coco in cocos.items():
        if split != "train":
            continue
        present = {a["category_id"] for a in coco["annotations"]}
        missing = [c["name"] for c in coco["categories"] if c["id"] not in present]
        if missing:
            logger.warning("class(es) %s have no instance in the train split; annotate more of them", ", ".join(missing))
    return json_paths, cocos


def read_labels(value) -> list[str] | None:
    """The class names, in id order, that ``--labels`` gives: a labels file or a comma-separated list.

    A labels file is what labelme's examples and labelme2coco use (``labels.txt``): one class per
    line, in id order; its ``__ignore__`` and ``_background_`` lines are not classes (labelme2coco
    gives them ids -1 and 0, so the classes' ids, from 1, are the same as its). A value that names
    an existing file is read as one; any other is a comma-separated list (``balloon,kite``).

    Returns:
        The class names (ids 1, 2, ... in this order), or None for an empty value: every label
        found in the data, sorted.

    Raises:
        ConfigError: a ``.txt`` file that does not exist, a name given twice, or no class at all.
    """
    if value is None or not str(value).strip():
        return None
    text = str(value).strip()
    path = Path(text).expanduser()
    if path.is_file():
        names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
        where = f"the labels file '{path}'"
    elif path.suffix.lower() == ".txt":
        raise ConfigError(f"the labels file '{path}' does not exist; pass the path of a labels.txt (one class per "
                          "line) or the class names separated by commas, e.g. --labels balloon,kite")
    else:
        names = [name.strip() for name in text.split(",")]
        where = f"--labels '{text}'"
    names = [name for name in names if name and name not in IGNORED_LABELS]
    twice = sorted(name for name, count in Counter(names).items() if count > 1)
    if twice:
        raise ConfigError(f"{where} names {', '.join(twice)} more than once; list each class once")
    if not names:
        raise ConfigError(f"{where} names no class (only {' and '.join(sorted(IGNORED_LABELS))} lines or nothing); "
                          "list one class per line, in id order")
    return names


def convert_labelme(
    source_dir,
    out_dir,
    val_fraction: float = 0.2,
    seed: int = 0,
    labels: list[str] | None = None,
    skip_invalid: bool = False,
) -> ConversionResult:
    """Converts a labelme folder into COCO train/val json files with the images beside them.

    Args:
        source_dir: folder of labelme ``.json`` files and images (sub-folders included).
        out_dir: where ``train.json`` and ``val.json`` (or ``dataset.json`` when
            ``val_fraction`` is 0) and an ``images/`` folder are written.
        val_fraction: share of images held out for validation.
        seed: makes the split reproducible.
        labels: class names in id order (ids start at 1); default: every label, sorted.
        skip_invalid: leave out shapes and files with problems instead of stopping.

    Returns:
        A :class:`ConversionResult` with the json paths and the per-class table.

    Raises:
        DatasetError: with every problem found, each naming its file and the fix.
    """
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    _prepare_out_dir([source_dir], out_dir)
    files, class_names, warnings = load_labelme_folder(source_dir, labels, skip_invalid, exclude=_outputs_of(out_dir))
    splits = split_files(files, val_fraction, seed)
    json_paths, cocos = _write_splits(splits, class_names, out_dir, str(source_dir), per_split_images=False)
    return _result(out_dir, json_paths, cocos, class_names, warnings)


def convert_labelme_splits(
    split_dirs: dict[str, Path],
    out_dir,
    labels: list[str] | None = None,
    skip_invalid: bool = False,
    val_from: str | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> ConversionResult:
    """Converts labelme folders that are already split (``{"train": dir, "val": dir}``).

    Each split goes to ``out_dir/<split>.json`` with its images under ``out_dir/images/<split>/``;
    category ids are the same in every split (``labels`` order, else all labels sorted).
    With ``val_from``, that folder is split at random into ``train`` and ``val`` (:func:`split_files`
    with ``val_fraction`` and ``seed``), e.g. ``{"train": a, "test": b}, val_from="train"``.
    """
    out_dir = Path(out_dir)
    split_dirs = {k: Path(v) for k, v in split_dirs.items()}
    _prepare_out_dir(list(split_dirs.values()), out_dir)
    loaded = {k: load_labelme_folder(d, labels, skip_invalid, exclude=_outputs_of(out_dir)) for k, d in split_dirs.items()}
    if labels is None:
        class_names = sorted({name for _, names, _ in loaded.values() for name in names})
    else:
        class_names = list(labels)
    warnings = [w for _, _, ws in loaded.values() for w in ws]
    splits = {k: files for k, (files, _, _) in loaded.items()}
    if val_from is not None:
        drawn = split_files(splits.pop(val_from), val_fraction, seed)
        splits = {"train": drawn["train"], "val": drawn["val"], **splits}
    source = ", ".join(str(d) for d in split_dirs.values())
    json_paths, cocos = _write_splits(splits, class_names, out_dir, source, per_split_images=True)
    return _result(out_dir, json_paths, cocos, class_names, warnings)


def _result(out_dir, json_paths, cocos, class_names, warnings) -> ConversionResult:
    table = format_class_table(cocos)
    logger.info("COCO json written to %s", ", ".join(str(p) for p in json_paths.values()))
    skipped = [w for w in warnings if w.startswith("left out: ")]
    return ConversionResult(out_dir, json_paths, class_names, table, warnings, skipped)

"""Batch prediction: many images in, masks, labelme files and tables out.

    from maskrcnn_finetune.predict import predict_images
    summary = predict_images("photos/", "outputs/predictions", model_dir="outputs/demo/model")

The input is a folder (searched recursively), a ``.zip``, a glob pattern, a text file of image
paths (one per line, relative to the text file), or a COCO json (its images, and the results
carry its image and category ids, so COCO tools and :mod:`maskrcnn_finetune.evaluate` score them).

What is written into the output folder (only the formats asked for):

- ``coco_results.json`` and ``coco_dataset.json`` (``coco``): every instance as a COCO result (box,
  score, category id, RLE mask), and the same instances as a COCO dataset that says which file each
  image id is (``images`` with ``file_name``, ``width``, ``height``; ``categories``; ``annotations``
  with their ``score``), the form CVAT, FiftyOne and pycocotools' ``COCO`` import. ``file_name`` is
  the image's path as the input names it: relative to the input folder or zip, as a glob pattern
  or a list gives it, or the input COCO json's own;
- ``labelme/<name>.json`` (``labelme``): the predictions as labelme annotations to correct
  (:mod:`maskrcnn_finetune.prelabel`); ``scripts/labelme_to_coco.py`` turns them back into COCO;
- ``masks/<name>/<k>.png`` and ``masks/<name>/union.png`` (``masks``): one 0/255 PNG per instance,
  and the union of an image's instances;
- ``overlays/<name>.png`` (``overlay``): the image with its masks drawn;
- ``summary.csv`` (``csv``): one row per instance (image, class, score, box, area in pixels and
  in % of the image);
- always: ``errors.csv`` (the files that could not be read, with why; they never stop the run),
  and with ``order="uncertainty"`` ``review_order.txt``.

Each image's results are kept in ``.records/<name>.json`` as soon as it is done, so an interrupted
run continues where it stopped (images already done are skipped unless ``overwrite``), memory stays
flat however many images there are, and several processes can share the work:
``torchrun --nproc_per_node N scripts/predict.py ...`` splits the images by rank and the first
process merges the tables at the end. The input is never written to.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import logging
import os
import shutil
import time
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import torch
import torch.distributed as dist
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from maskrcnn_finetune.data.coco import load_coco
from maskrcnn_finetune.data.images import IMAGE_SUFFIXES, load_rgb
from maskrcnn_finetune.devices import default_runtime
from maskrcnn_finetune.errors import ConfigError, first_line
from maskrcnn_finetune.evaluate import encode_rle, instances_to_coco
from maskrcnn_finetune.files import atomic_path, write_bytes_atomic, write_json_atomic
from maskrcnn_finetune.loading import load_predictor
from maskrcnn_finetune.structures import Instances

logger = logging.getLogger(__name__)

FORMATS = ("coco", "labelme", "masks", "overlay", "csv")
ORDERS = ("name", "uncertainty")
RECORDS = ".records"
RUN_JSON = "run.json"  # in RECORDS: the model and settings the records were made with
COCO_RESULTS = "coco_results.json"
COCO_DATASET = "coco_dataset.json"
MAX_PIXELS = 100_000_000
"""Images with more pixels are reported in errors.csv instead of being decoded (about 300 MB of RGB)."""


@dataclass(frozen=True)
class ImageSource:
    """One input image.

    Attributes:
        name: its path relative to the input without the suffix (``sub/photo``): the name of
            its outputs. The suffix is kept when two files differ only by it.
        path: the file on disk, or the member's name inside ``zip_path``.
        zip_path: the zip the image is read from, or None.
        image_id: its COCO image id (from the input json, else its position, from 1).
        file_name: its path as the input names it (``coco_dataset.json``'s ``file_name``): relative
            to the input folder, the member of the zip, the path a glob pattern or a list gives,
            or the input COCO json's ``file_name``.
    """

    name: str
    path: str
    zip_path: str | None = None
    image_id: int = 0
    file_name: str = ""

    def read_bytes(self) -> bytes:
        if self.zip_path is None:
            return Path(self.path).read_bytes()
        with zipfile.ZipFile(self.zip_path) as archive:
            return archive.read(self.path)

    @property
    def suffix(self) -> str:
        return Path(self.path).suffix.lower()


def _is_image(path: str) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES and not any(
        part.startswith(".") for part in Path(path).parts)


def _named(paths: list[str], root: str, zip_path: str | None = None, ids: list[int] | None = None,
           file_names: list[str] | None = None) -> list[ImageSource]:
    """Sources with output names relative to ``root`` (sorted by name; ids by position unless given;
    file names relative to ``root`` unless given)."""
    rel = [Path(os.path.relpath(p, root)).as_posix() if zip_path is None else p for p in paths]
    stems = [str(Path(r).with_suffix("")) for r in rel]
    clashes = {s for s, n in Counter(stems).items() if n > 1}
    names = [r if s in clashes else s for r, s in zip(rel, stems)]
    order = sorted(range(len(paths)), key=lambda i: names[i])
    return [ImageSource(names[i], paths[i], zip_path, ids[i] if ids else position + 1,
                        file_names[i] if file_names else rel[i]) for position, i in enumerate(order)]


def collect_images(source, output=None) -> tuple[list[ImageSource], dict[str, int] | None]:
    """The images of an input, and the category ids by class name when the input is a COCO json.

    Raises:
        ConfigError: the input does not exist, holds no images, or contains the output folder.
    """
    text = str(source)
    path = Path(text)
    if any(ch in text for ch in "*?[") and not path.exists():
        files = sorted(p for p in glob.glob(text, recursive=True) if _is_image(p) and Path(p).is_file())
        if not files:
            raise ConfigError(f"the pattern '{text}' matches no image files ({', '.join(IMAGE_SUFFIXES)})")
        root = os.path.commonpath([str(Path(p).parent) for p in files])
        return _named(files, root, file_names=files), None
    if not path.exists():
        raise ConfigError(f"'{path}' does not exist; pass a folder, a .zip, a glob pattern, a .txt list or a COCO json")
    if output is not None and path.is_dir() and Path(output).resolve().is_relative_to(path.resolve()):
        raise ConfigError(f"the output folder '{output}' is inside the input folder '{path}'; the input is never "
                          "written to: choose an output folder outside it")
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.is_file() and _is_image(str(p.relative_to(path))))
        if not files:
            raise ConfigError(f"'{path}' holds no image files ({', '.join(IMAGE_SUFFIXES)}), also in its subfolders")
        return _named(files, str(path)), None
    if path.suffix.lower() == ".zip":
        try:
            with zipfile.ZipFile(path) as archive:
                members = sorted(i.filename for i in archive.infolist() if not i.is_dir() and _is_image(i.filename))
        except zipfile.BadZipFile as exc:
            raise ConfigError(f"'{path}' is not a readable zip ({first_line(exc)})") from exc
        if not members:
            raise ConfigError(f"the zip '{path}' holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        return _named(members, "", zip_path=str(path)), None
    if path.suffix.lower() == ".json":
        coco = load_coco(path, check_images=False)
        files = [str(coco.image_path(image)) for image in coco.images]
        ids = [int(image["id"]) for image in coco.images]
        if not files:
            raise ConfigError(f"the COCO json '{path}' lists no images")
        root = os.path.commonpath([str(Path(p).parent) for p in files])
        return (_named(files, root, ids=ids, file_names=[str(image["file_name"]) for image in coco.images]),
                {c["name"]: int(c["id"]) for c in coco.categories})
    if path.suffix.lower() in (".txt", ".lst", ".list"):
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        given = [line for line in lines if line and not line.startswith("#")]
        files = [str((path.parent / line).resolve()) for line in given]
        if not files:
            raise ConfigError(f"the list '{path}' names no images (one path per line, relative to the list)")
        root = os.path.commonpath([str(Path(p).parent) for p in files])
        return _named(files, root, file_names=given), None
    raise ConfigError(f"'{path}' is neither a folder, a .zip, a .txt list nor a COCO .json; pass one of those, "
                      "or a glob pattern such as 'photos/**/*.jpg'")


class _DecodedImages(torch.utils.data.Dataset):
    """Decodes the images (in DataLoader workers when asked), turning unreadable ones into error texts."""

    def __init__(self, sources: list[ImageSource], max_pixels: int) -> None:
        self.sources = sources
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int):
        source = self.sources[index]
        try:
            data = io.BytesIO(source.read_bytes())
            with Image.open(data) as probe:
                width, height = probe.size
            if width * height > self.max_pixels:
                return index, None, (f"{width}x{height} px is more than the {self.max_pixels:,} pixels allowed; "
                                     "resize it, or raise --max-pixels")
            data.seek(0)
            return index, load_rgb(data), None
        except UnidentifiedImageError:
            return index, None, f"not an image ({source.suffix} file that Pillow cannot identify); replace or remove it"
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, zipfile.BadZipFile) as exc:
            return index, None, f"not a readable image ({first_line(exc)}); replace or remove the file"


def _collate(batch):
    return batch


def _dist_rank_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _image_rel_path(source: ImageSource, labelme_json: Path) -> str:
    return Path(os.path.relpath(Path(source.path).resolve(), labelme_json.parent.resolve())).as_posix()


class _Writer:
    """Writes one image's outputs, then its record (the record marks the image as done)."""

    def __init__(self, out: Path, formats: set[str], category_ids: list[int], min_iou: float,
                 review_below: float | None) -> None:
        self.out = out
        self.formats = formats
        self.category_ids = category_ids
        self.min_iou = min_iou
        self.review_below = review_below

    def record_path(self, source: ImageSource) -> Path:
        return self.out / RECORDS / f"{source.name}.json"

    def write(self, source: ImageSource, image: np.ndarray, instances: Instances) -> None:
        name = source.name
        if "labelme" in self.formats:
            from maskrcnn_finetune.prelabel import instances_to_labelme

            target = self.out / "labelme" / f"{name}.json"
            if source.zip_path is None:
                image_path = _image_rel_path(source, target)
            else:  # labelme opens the image beside its json: the zip's member is copied there
                image_path = Path(name).name + source.suffix
                write_bytes_atomic(target.parent / image_path, source.read_bytes())
            write_json_atomic(target, instances_to_labelme(instances, image_path, min_iou=self.min_iou,
                                                           review_below=self.review_below))
        if "masks" in self.formats:
            folder = self.out / "masks" / name
            shutil.rmtree(folder, ignore_errors=True)  # an overwritten image may have fewer instances
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(len(instances)):
                _write_png(folder / f"{k}.png", instances.masks[k])
            _write_png(folder / "union.png", instances.union_mask())
        if "overlay" in self.formats:
            from maskrcnn_finetune.visualize import draw_instances

            _write_png(self.out / "overlays" / f"{name}.png", draw_instances(image, instances))
        height, width = instances.image_size
        total = float(height * width) or 1.0
        rows = []
        for k in range(len(instances)):
            area = int(np.count_nonzero(instances.masks[k]))
            rows.append([source.name, k, instances.class_names[int(instances.class_ids[k])],
                         round(float(instances.scores[k]), 5), *[round(float(v), 2) for v in instances.boxes[k]],
                         area, round(100.0 * area / total, 4)])
        record = {
            "name": name,
            "file": _file_of(source),
            "image_id": source.image_id,
            "height": int(height),
            "width": int(width),
            "coco": instances_to_coco(instances, source.image_id, self.category_ids,
                                      rles=[encode_rle(m) for m in instances.masks]),
            "rows": rows,
        }
        write_json_atomic(self.record_path(source), record)


def _file_of(source: ImageSource) -> str:
    return source.path if source.zip_path is None else f"{source.zip_path}:{source.path}"


def _write_png(path: Path, array: np.ndarray) -> None:
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())


SUMMARY_HEADER = ["image", "instance", "class", "score", "x0", "y0", "x1", "y1", "area_px", "area_percent"]


def _merge(out: Path, sources: list[ImageSource], formats: set[str], order: str, errors: dict[str, dict],
           categories: list[dict]) -> dict:
    """The tables over every image's record, written once all processes are done.

    Every record's instances take the image id of its source in this input, so the results list
    and the dataset agree with each other and with the input however many runs made the records.
    """
    per_class: Counter = Counter()
    images_with = Counter()
    review = []
    done = annotations = 0
    images = []
    with contextlib.ExitStack() as stack:
        def opened(name: str, wanted: bool, newline: str | None = None):
            if not wanted:
                return None
            tmp = stack.enter_context(atomic_path(out / name))  # renamed over the file once all is written
            return stack.enter_context(open(tmp, "w", encoding="utf-8", newline=newline))

        coco_fh = opened(COCO_RESULTS, "coco" in formats)
        dataset_fh = opened(COCO_DATASET, "coco" in formats)
        csv_fh = opened("summary.csv", "csv" in formats, newline="")
        writer = csv.writer(csv_fh) if csv_fh else None
        if writer:
            writer.writerow(SUMMARY_HEADER)
        if coco_fh:
            coco_fh.write("[")
            dataset_fh.write(f'{{"info": {json.dumps(DATASET_INFO)}, "licenses": [], '
                             f'"categories": {json.dumps(categories)},\n"annotations": [')
        for source in sources:
            path = out / RECORDS / f"{source.name}.json"
            if not path.is_file():
                continue
            record = json.loads(path.read_text())
            done += 1
            if coco_fh:
                images.append({"id": source.image_id, "file_name": source.file_name, "width": record["width"],
                               "height": record["height"]})
                for entry in record["coco"]:
                    entry = {**entry, "image_id": source.image_id}
                    separator = ",\n" if annotations else ""
                    annotations += 1
                    coco_fh.write(separator + json.dumps(entry))
                    dataset_fh.write(separator + json.dumps(_annotation(entry, annotations)))
            classes = [row[2] for row in record["rows"]]
            per_class.update(classes)
            images_with.update(set(classes))
            if writer:
                writer.writerows(record["rows"])
            scores = [row[3] for row in record["rows"]]
            review.append((min(scores) if scores else 2.0, source.name, len(scores)))
        if coco_fh:
            coco_fh.write("]\n")
            dataset_fh.write(f'],\n"images": {json.dumps(images)}}}\n')
    with atomic_path(out / "errors.csv") as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["image", "file", "problem"])
            writer.writerows([name, error["file"], error["problem"]] for name, error in sorted(errors.items()))
    if order == "uncertainty":
        review.sort()
        lines = ["# least sure first: lowest instance score, then name; images without detections last",
                 *[f"{name}\t{'-' if low > 1 else f'{low:.4f}'}\t{n}" for low, name, n in review]]
        with atomic_path(out / "review_order.txt") as tmp:
            tmp.write_text("\n".join(lines) + "\n")
    return {"images_done": done, "errors": len(errors), "instances_per_class": dict(per_class),
            "images_per_class": dict(images_with)}


DATASET_INFO = {"description": "predictions of a maskrcnn-finetune model (scripts/predict.py); each annotation's "
                               "score is the model's"}


def _annotation(result: dict, annotation_id: int) -> dict:
    """A COCO result entry as a dataset annotation: with its id, its mask's area in pixels and ``iscrowd`` 0."""
    rle = result["segmentation"]
    area = float(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode("ascii")}))
    return {"id": annotation_id, "image_id": result["image_id"], "category_id": result["category_id"],
            "bbox": result["bbox"], "area": area, "segmentation": rle, "iscrowd": 0, "score": result["score"]}


def _category_ids(class_names: list[str], by_name: dict[str, int] | None) -> list[int]:
    if not by_name:
        return list(range(1, len(class_names) + 1))
    missing = [name for name in class_names if name not in by_name]
    if missing:
        logger.warning("the COCO json has no category named %s: those instances get ids after its own",
                       ", ".join(missing))
    next_id = max(by_name.values(), default=0) + 1
    ids = []
    for name in class_names:
        if name in by_name:
            ids.append(by_name[name])
        else:
            ids.append(next_id)
            next_id += 1
    return ids


def _model_identity(predictor) -> dict:
    """What tells one trained model from another: its model.json's creation time, backbone and classes."""
    info = predictor.info or {}
    return {"created": info.get("created"), "backbone": getattr(predictor.spec, "backbone", None),
            "class_names": list(predictor.class_names)}


def _check_earlier_run(out: Path, settings: dict, overwrite: bool) -> None:
    """Refuses to mix these predictions with those of another model or other settings in ``out``.

    Raises:
        ConfigError: ``out`` holds predictions made otherwise, and ``overwrite`` is off.
    """
    path = out / RECORDS / RUN_JSON
    if overwrite or not path.is_file():
        return
    earlier = json.loads(path.read_text())
    if earlier.get("model") != settings["model"]:
        was = earlier.get("model") or {}
        raise ConfigError(f"'{out}' holds the predictions of another model ({was.get('backbone')} trained "
                          f"{was.get('created')}, classes {', '.join(was.get('class_names') or [])}); pass --overwrite "
                          "to replace them, or choose another --output-dir")
    changed = [f"{key} {earlier.get(key)!r} there, {settings[key]!r} here" for key in settings
               if key != "model" and earlier.get(key) != settings[key]]
    if changed:
        raise ConfigError(f"'{out}' holds predictions made with other settings ({'; '.join(changed)}); run with the "
                          "same settings to continue that run, pass --overwrite to predict everything again, or "
                          "choose another --output-dir")


def _errors_of(out: Path, sources: list[ImageSource]) -> dict[str, dict]:
    """The unreadable images of this input (``{name: {"file", "problem"}}``), as every process left them."""
    errors = {}
    for source in sources:
        path = out / RECORDS / f"{source.name}.error"
        if path.is_file():
            errors[source.name] = json.loads(path.read_text(encoding="utf-8"))
    return errors


def predict_images(source, output, *, model_dir=None, predictor=None, threshold: float | None = None,
                   device: str = "auto", formats=FORMATS, workers: int = 0, batch_size: int = 1,
                   overwrite: bool = False, review_below: float | None = None, order: str = "name",
                   min_iou: float | None = None, max_pixels: int = MAX_PIXELS, progress: bool = True,
                   runtime: str | None = None, calibration=None, val_json=None) -> dict:
    """Predicts every image of ``source`` and writes the outputs into ``output`` (see the module's text).

    Args:
        source: a folder, a ``.zip``, a glob pattern, a ``.txt`` list of paths, or a COCO json.
        output: the output folder (created; must not be inside an input folder).
        model_dir / predictor: the model folder to load, or a :class:`~maskrcnn_finetune.predictor.Predictor`.
        threshold: instances below it are left out (default: the model folder's threshold).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (under torchrun each process takes its own GPU).
        formats: which of :data:`FORMATS` to write.
        workers: DataLoader processes decoding images while the model runs (0: in this process).
        batch_size: images per model call (on a GPU, more than 1 keeps it busy).
        overwrite: predict the images already done again.
        review_below: labelme shapes of instances under this score get ``flags["review"]``.
        order: ``"uncertainty"`` also writes ``review_order.txt``, least sure images first.
        min_iou: how closely labelme polygons keep the masks (default
            :data:`~maskrcnn_finetune.prelabel.DEFAULT_MIN_IOU`).
        max_pixels: larger images are reported in errors.csv instead of decoded.
        progress: show a tqdm bar (images/s).
        runtime: with ``model_dir``, one of :data:`~maskrcnn_finetune.devices.RUNTIME_CHOICES`
            (:func:`maskrcnn_finetune.loading.load_predictor`; default
            :func:`~maskrcnn_finetune.devices.default_runtime`, ``auto``: the fastest runtime that passes its
            check, torch where OpenVINO is not installed); int8 is calibrated on ``calibration``
            (a folder of images; default: the model's training images) and judged on ``val_json``
            (default: the model's own val json).

    Returns:
        A summary: images in the input, predicted now, skipped (already done), errors, instances
        per class, seconds and images per second of this run, and how the model ran (``inference``:
        the Predictor's mode and its runtime ``choice``, as the server's ``/api/v1/model`` reports them).

    Raises:
        ConfigError: a bad input, output, format or option; the message says what to pass.
    """
    formats = set(formats)
    unknown = sorted(formats - set(FORMATS))
    if unknown:
        raise ConfigError(f"unknown output format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    if order not in ORDERS:
        raise ConfigError(f"unknown order '{order}'; choose from {', '.join(ORDERS)}")
    if batch_size < 1 or workers < 0:
        raise ConfigError("--batch-size must be at least 1 and --workers at least 0")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"the threshold must be between 0 and 1, got {threshold}")
    if (model_dir is None) == (predictor is None):
        raise ConfigError("pass a model folder (--model-dir) or a Predictor, one of the two")
    from maskrcnn_finetune.prelabel import DEFAULT_MIN_IOU

    min_iou = DEFAULT_MIN_IOU if min_iou is None else min_iou
    out = Path(output)
    sources, categories = collect_images(source, out)
    rank, world = _dist_rank_world()
    distributed = world > 1
    if distributed and not dist.is_initialized():
        dist.init_process_group("gloo")
    if predictor is None:
        if distributed and device != "cpu" and torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank)) % torch.cuda.device_count()}"
        predictor = load_predictor(model_dir, runtime or default_runtime(), device=device, calibration=calibration,
                                   val_json=val_json)
    threshold = predictor.score_threshold if threshold is None else threshold
    writer = _Writer(out, formats, _category_ids(predictor.class_names, categories), min_iou, review_below)
    settings = {"model": _model_identity(predictor), "threshold": threshold, "formats": sorted(formats),
                "min_iou": min_iou, "review_below": review_below, "category_ids": writer.category_ids}
    _check_earlier_run(out, settings, overwrite)
    if distributed:
        dist.barrier()  # every process has compared before the first one writes
    if rank == 0:
        write_json_atomic(out / RECORDS / RUN_JSON, settings)
    mine = sources[rank::world]
    todo = [s for s in mine if overwrite or not writer.record_path(s).is_file()]
    skipped = len(mine) - len(todo)
    if skipped:
        logger.info("%d of %d images were done by an earlier run and are skipped (--overwrite predicts them again)",
                    skipped, len(mine))
    # forking a process whose OpenVINO (and NNCF) threads are running can crash the workers: they start afresh
    spawn = workers > 0 and predictor.runtime.startswith("openvino")
    loader = torch.utils.data.DataLoader(_DecodedImages(todo, max_pixels), batch_size=batch_size,
                                         num_workers=workers, collate_fn=_collate,
                                         multiprocessing_context="spawn" if spawn else None)
    start = time.perf_counter()
    predicted = 0
    bar = tqdm(total=len(todo), unit="img", desc="predict", disable=not progress or rank != 0)
    for batch in loader:
        good = [(i, image) for i, image, problem in batch if problem is None]
        for i, image, problem in batch:
            error_path = out / RECORDS / f"{todo[i].name}.error"
            if problem is not None:
                logger.warning("%s: %s", todo[i].path, problem)
                write_json_atomic(error_path, {"file": _file_of(todo[i]), "problem": problem})
            else:
                error_path.unlink(missing_ok=True)
        if good:
            results = predictor([image for _, image in good], threshold=threshold)
            for (i, image), instances in zip(good, results):
                writer.write(todo[i], image, instances)
                predicted += 1
        bar.update(len(batch))
    bar.close()
    seconds = time.perf_counter() - start
    if distributed:  # the whole run: every process's images, in the slowest process's time
        totals = torch.tensor([float(predicted), float(skipped)], dtype=torch.float64)
        slowest = torch.tensor([seconds], dtype=torch.float64)
        dist.all_reduce(totals)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        predicted, skipped, seconds = int(totals[0]), int(totals[1]), float(slowest[0])
    summary = {"images": len(sources), "predicted": predicted, "skipped": skipped, "seconds": round(seconds, 3),
               "images_per_second": round(predicted / seconds, 3) if seconds > 0 and predicted else 0.0,
               "threshold": threshold, "processes": world,
               "inference": {**predictor.mode, "choice": predictor.choice}}
    if rank == 0:
        dataset_categories = [{"id": category_id, "name": name, "supercategory": ""}
                              for category_id, name in zip(writer.category_ids, predictor.class_names)]
        summary.update(_merge(out, sources, formats, order, _errors_of(out, sources), dataset_categories))
        write_json_atomic(out / "summary.json", summary)
    if distributed:
        dist.barrier()
    return summary


def format_class_counts(summary: dict) -> str:
    """The per-class count table printed at the end of a run, as Markdown."""
    lines = ["| class | instances | images |", "| --- | ---: | ---: |"]
    per_class = summary.get("instances_per_class", {})
    for name in sorted(per_class, key=lambda n: -per_class[n]):
        lines.append(f"| {name} | {per_class[name]} | {summary['images_per_class'][name]} |")
    if not per_class:
        lines.append("| (none) | 0 | 0 |")
    return "\n".join(lines)


def labelme_bundle(output, zip_path) -> Path:
    """A zip of each predicted image beside its labelme json, to correct in labelme on another machine.

    ``imagePath`` is rewritten to the image's name beside the json (labelme opens the pair as it
    is), and the zip unpacks into one folder that ``scripts/labelme_to_coco.py`` converts as it is.

    Raises:
        ConfigError: ``output`` holds no labelme predictions (run with the ``labelme`` format).
    """
    output, zip_path = Path(output), Path(zip_path)
    folder = output / "labelme"
    documents = sorted(folder.rglob("*.json")) if folder.is_dir() else []
    if not documents:
        raise ConfigError(f"'{output}' holds no labelme predictions; run predict_images with the 'labelme' format")
    with atomic_path(zip_path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in documents:
            document = json.loads(path.read_text())
            image = (path.parent / document["imagePath"]).resolve()
            rel = path.relative_to(folder).with_suffix("")
            image_name = rel.name + image.suffix
            document["imagePath"] = image_name
            archive.write(image, (rel.parent / image_name).as_posix())
            archive.writestr(rel.with_suffix(".json").as_posix(), json.dumps(document))
    logger.info("%d labelme files with their images in %s", len(documents), zip_path)
    return zip_path

"""The result store: each prediction's files under ``<output folder>/results/<id>/``.

Ids are random (uuid4 hex), so one client cannot guess another's results. A result is
written into a hidden temporary folder and renamed into place in one step, so a reader sees
either nothing or every file. Results older than the retention are removed.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np
from flask import Flask, current_app
from PIL import Image

from maskrcnn_finetune.files import write_bytes_atomic
from maskrcnn_finetune.structures import Instances
from maskrcnn_finetune.visualize import crop_instance, draw_instances, mask_image
from rest_api_flask.encoding import coco_results
from rest_api_flask.errors import ApiError

logger = logging.getLogger(__name__)

_ID = re.compile(r"^[0-9a-f]{32}$")
OVERLAY_SOURCE = ".overlay-source.npz"  # what the overlay is drawn from, on its first request
_INSTANCE_FILE = re.compile(r"^instances/(\d{1,6})/(mask|crop)\.png$")
FILES = ("overlay.png", "masks.zip", "result.json", "coco_results.json", "labelme.json")


def png_bytes(array: np.ndarray) -> bytes:
    """An array (``(H, W)`` grey, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA uint8) as PNG bytes.

    zlib level 1: every request writes an overlay and a PNG per instance, and at level 1 they
    are written several times faster than at Pillow's default for files a little larger.
    """
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def mask_png(mask: np.ndarray) -> bytes:
    """A binary mask as a one-channel PNG of 0 and 255 at the mask's size."""
    return png_bytes(mask_image(mask))


def crop_png(image: np.ndarray, mask: np.ndarray, box) -> bytes:
    """The instance cut out of the image (see :func:`maskrcnn_finetune.visualize.crop_instance`) as PNG."""
    return png_bytes(crop_instance(image, mask, box))


def zip_name(index: int, class_name: str) -> str:
    """``instance_007_balloon.png``: the name of an instance's mask inside ``masks.zip``."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", class_name).strip("._") or "class"
    return f"instance_{index:03d}_{safe}.png"


class PendingResult:
    """A result being written; :meth:`commit` makes it visible under its id."""

    def __init__(self, store: "ResultStore", result_id: str) -> None:
        self.store = store
        self.id = result_id
        self.tmp = store.root / f".tmp-{result_id}"
        self.tmp.mkdir(parents=True)

    def write_files(self, image: np.ndarray, instances: Instances, rles: list[dict] | None = None,
                    union: np.ndarray | None = None, remove_colors: bool = False) -> None:
        """Writes each instance's mask and crop, ``masks.zip`` (masks plus their union),
        ``coco_results.json``, and what the overlay is drawn from.

        The overlay PNG of a large photo takes longer to encode than everything else together,
        and the web page draws the masks itself, so it is drawn when it is first asked for
        (:meth:`ResultStore.path`), from the image and the masks kept here (uncompressed numpy,
        masks bit-packed: quick to write).

        Args:
            rles: the masks as COCO RLE, when the caller has encoded them already (see
                :func:`rest_api_flask.encoding.mask_rles`).
            union: ``instances.union_mask()``, when the caller has it already.
            remove_colors: the overlay is drawn on a grey copy of the image.
        """
        np.savez(self.tmp / OVERLAY_SOURCE, image=np.ascontiguousarray(image, dtype=np.uint8),
                 masks=np.packbits(instances.masks, axis=-1), boxes=instances.boxes, scores=instances.scores,
                 class_ids=instances.class_ids, class_names=np.array(instances.class_names, dtype=str),
                 remove_colors=np.bool_(remove_colors))
        with zipfile.ZipFile(self.tmp / "masks.zip", "w", compression=zipfile.ZIP_STORED) as archive:
            for k in range(len(instances)):
                folder = self.tmp / "instances" / str(k)
                folder.mkdir(parents=True)
                mask = mask_png(instances.masks[k])  # encoded once: the file and the zip entry
                (folder / "mask.png").write_bytes(mask)
                (folder / "crop.png").write_bytes(crop_png(image, instances.masks[k], instances.boxes[k]))
                archive.writestr(zip_name(k, instances.class_names[int(instances.class_ids[k])]), mask)
            archive.writestr("union.png", mask_png(instances.union_mask() if union is None else union))
        (self.tmp / "coco_results.json").write_text(json.dumps(coco_results(instances, rles=rles)))

    def commit(self, payload: dict) -> None:
        """Writes ``result.json`` and moves the folder into place in one rename."""
        (self.tmp / "result.json").write_text(json.dumps(payload))
        os.replace(self.tmp, self.store.root / self.id)

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _instances_and_image(folder: Path) -> tuple[Instances, np.ndarray, bool] | None:
    """A result's instances, image and grey-background choice, from what :meth:`PendingResult.write_files`
    kept for drawing."""
    source = folder / OVERLAY_SOURCE
    if not source.is_file():
        return None
    with np.load(source) as data:
        image = data["image"]
        masks = np.unpackbits(data["masks"], axis=-1, count=image.shape[1]).astype(bool)
        instances = Instances((image.shape[0], image.shape[1]), data["boxes"], data["scores"], data["class_ids"],
                              masks, [str(name) for name in data["class_names"]])
        remove_colors = bool(data["remove_colors"]) if "remove_colors" in data.files else False
    return instances, image, remove_colors


def write_labelme(folder: Path) -> None:
    """Writes ``labelme.json`` of a result folder on its first request: the predictions as labelme
    shapes to correct (:mod:`maskrcnn_finetune.prelabel`), the image embedded (``imageData``) so
    that labelme opens the file alone; ``imagePath`` is the uploaded file's name."""
    from maskrcnn_finetune.prelabel import instances_to_labelme

    loaded = _instances_and_image(folder)
    if loaded is None:
        return
    instances, image, _ = loaded
    name = json.loads((folder / "result.json").read_text())["image"].get("filename") or f"{folder.name}.png"
    document = instances_to_labelme(instances, Path(name).name)
    document["imageData"] = base64.b64encode(png_bytes(image)).decode("ascii")
    write_bytes_atomic(folder / "labelme.json", json.dumps(document).encode("utf-8"))


def draw_overlay(folder: Path) -> None:
    """Draws ``overlay.png`` of a result folder from its overlay source (written atomically;
    two requests at once both draw it, and the second rename replaces the first's same file)."""
    loaded = _instances_and_image(folder)
    if loaded is None:
        return
    instances, image, remove_colors = loaded
    write_bytes_atomic(folder / "overlay.png", png_bytes(draw_instances(image, instances, remove_colors=remove_colors)))


class ResultStore:
    """Result folders under ``output_folder/results``, removed after ``retention_minutes``.

    Args:
        output_folder: the server's output folder.
        retention_minutes: age after which a result is deleted (0 keeps them forever).
        upload_folder: the server's upload folder; received images are kept in its ``api/`` beside
            their result ids and removed with them (None: not kept).
        cleanup_interval_s: the least time between two looks for expired results (made on a new
            result), capped at half the retention; the app's ``CLEANUP_INTERVAL_S``.
    """

    def __init__(self, output_folder, retention_minutes: float = 60, upload_folder=None,
                 cleanup_interval_s: float = 60.0) -> None:
        self.root = Path(output_folder).resolve() / "results"
        self.root.mkdir(parents=True, exist_ok=True)
        # the API keeps each received image beside its result id, apart from the user's own files
        self.uploads = Path(upload_folder).resolve() / "api" if upload_folder else None
        if self.uploads:
            self.uploads.mkdir(parents=True, exist_ok=True)
        self.retention_s = float(retention_minutes) * 60
        self.cleanup_interval_s = float(cleanup_interval_s)
        self._last_cleanup = 0.0
        self._cleanup_lock = threading.Lock()

    def begin(self) -> PendingResult:
        """A new result with a fresh unique id."""
        self.cleanup()
        return PendingResult(self, uuid.uuid4().hex)

    def save_upload(self, result_id: str, data: bytes, suffix: str = "") -> Path | None:
        """Keeps the received image bytes as ``<upload folder>/api/<id><suffix>`` (written atomically)."""
        if self.uploads is None or not data:
            return None
        target = self.uploads / f"{result_id}{suffix}"
        tmp = self.uploads / f".tmp-{result_id}"
        tmp.write_bytes(data)
        os.replace(tmp, target)
        return target

    def path(self, result_id: str, name: str) -> Path:
        """The file ``name`` of result ``result_id``.

        Raises:
            ApiError: 404 for a malformed or unknown id or file name (names are matched against
                the known files, never joined as given).
        """
        if not _ID.match(result_id or ""):
            raise ApiError(f"unknown result id {result_id[:64]!r}; use the id a prediction returned", 404)
        if name not in FILES and not _INSTANCE_FILE.match(name):
            raise ApiError(f"a result has no file {name[:100]!r}; it has {', '.join(FILES)} and "
                           "instances/<k>/mask.png, instances/<k>/crop.png", 404)
        folder = self.root / result_id
        if not folder.is_dir():
            raise ApiError(f"unknown result id {result_id}: it never existed or was removed after the "
                           "retention time; run the prediction again", 404)
        path = folder / name
        if name == "overlay.png" and not path.is_file():
            draw_overlay(folder)
        if name == "labelme.json" and not path.is_file():
            write_labelme(folder)
        if not path.is_file():
            raise ApiError(f"result {result_id} has no {name}; instance numbers run from 0 to num_instances - 1", 404)
        return path

    def cleanup(self, force: bool = False) -> int:
        """Removes results (and abandoned temporary folders) older than the retention.

        Unless ``force``, at most every ``cleanup_interval_s`` seconds (and half the retention).

        Returns:
            How many folders were removed.
        """
        if self.retention_s <= 0:
            return 0
        now = time.time()
        if not force and now - self._last_cleanup < min(self.cleanup_interval_s, self.retention_s / 2):
            return 0
        if not self._cleanup_lock.acquire(blocking=False):
            return 0
        removed = 0
        try:
            self._last_cleanup = now
            entries = list(self.root.iterdir()) + (list(self.uploads.iterdir()) if self.uploads else [])
            for entry in entries:
                try:
                    old = now - entry.stat().st_mtime > self.retention_s
                except FileNotFoundError:
                    continue
                if not old:
                    continue
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed += 1
        finally:
            self._cleanup_lock.release()
        if removed:
            logger.info("removed %d results older than %.0f minutes", removed, self.retention_s / 60)
        return removed


def init_app(app: Flask) -> None:
    """Attaches the app's :class:`ResultStore` and removes expired results at start."""
    store = ResultStore(app.config["OUTPUT_FOLDER"], app.config["RETENTION_MINUTES"], app.config["UPLOAD_FOLDER"],
                        app.config["CLEANUP_INTERVAL_S"])
    store.cleanup(force=True)
    app.extensions["results"] = store


def get_store() -> ResultStore:
    """The app's :class:`ResultStore`."""
    return current_app.extensions["results"]

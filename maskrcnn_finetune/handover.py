"""What the notebooks hand each other: the work folder (Google Drive in Colab), uploads, checked paths.

In Colab every notebook runs in its own runtime, and a runtime's ``/content`` is gone with it:
only Google Drive survives from ``01_prepare_dataset`` to ``02_finetune_and_compare`` to
``03_serve``. So the work folder is on Drive by default in Colab, a path under
``/content/drive`` mounts Drive by itself, and a path that one notebook needs from another is
checked before anything runs, with a message that says which notebook writes it. A field left
empty takes what the notebook before left: 02 trains on the newest data set 01 converted, 03 and 04
start from the newest model trained (:func:`pick_training_data`, :func:`pick_model`), and say which.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from datetime import datetime
from pathlib import Path
from urllib.parse import unquote, urlparse

from maskrcnn_finetune.colab import in_colab
from maskrcnn_finetune.forms import WORK_DIR_ENV, smoke_mode
from maskrcnn_finetune.errors import ConfigError

logger = logging.getLogger(__name__)

DRIVE_ROOT = Path("/content/drive")
DRIVE_SUBDIR = "maskrcnn-finetune"
BIG_UPLOAD_BYTES = 200 * 2**20  # above this the browser upload crawls: Drive is the better way in
LOCAL_DIR = "outputs"  # the runtime's own folder (relative to the notebook's, /content in Colab): gone with it
CONVERTED_DIR = "coco"  # 01 writes each data set to work/coco/<its name>/{train,val,test}.json
MODEL_FOLDERS = ("runs/*", "rounds/*/model")  # where 00 and 02 (runs/) and 04 (rounds/<round>/model) train
UPLOAD_PREFIX = "upload-"


def mount_drive(subdir: str = DRIVE_SUBDIR) -> Path:
    """Mounts Google Drive (Colab asks for permission once) and returns ``MyDrive/subdir``, created.

    Raises:
        ConfigError: not in Colab.
    """
    if not in_colab():
        raise ConfigError("Google Drive can only be mounted in Colab; untick USE_DRIVE, or give a local folder")
    if not (DRIVE_ROOT / "MyDrive").is_dir():
        from google.colab import drive  # only exists in Colab

        drive.mount(str(DRIVE_ROOT))
    folder = DRIVE_ROOT / "MyDrive" / subdir
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def work_dir(use_drive: bool = True, subdir: str = DRIVE_SUBDIR, local: str | Path = LOCAL_DIR) -> Path:
    """The folder a notebook writes its data, models and results to, created.

    In Colab with ``use_drive``: ``MyDrive/subdir`` on Google Drive, which the next notebook
    (another runtime) finds again and where a disconnected training run resumes; Drive is mounted
    here, so that its permission dialog comes in the settings cell with the other questions.
    Smoke mode: ``$MRCNN_WORKDIR`` or a new temporary folder (in Colab, after the same dialog).
    Otherwise ``local``.

    Args:
        use_drive: keep everything on Google Drive (Colab only; elsewhere ``local`` is used).
        subdir: the folder under ``MyDrive``.
        local: the folder used without Drive (relative to the notebook's working directory).

    Returns:
        The absolute folder.
    """
    drive = mount_drive(subdir) if use_drive and in_colab() else None
    if smoke_mode():
        folder = Path(os.environ.get(WORK_DIR_ENV) or tempfile.mkdtemp(prefix="mrcnn_smoke_"))
    elif drive is not None:
        folder = drive
    else:
        if in_colab():
            logger.warning("USE_DRIVE is off: %s disappears with this runtime, and the next notebook (another "
                           "runtime) will not find what this one writes", Path(local).resolve())
        folder = Path(local)
    folder.mkdir(parents=True, exist_ok=True)
    return folder.resolve()


def serve_dir(work: Path, keep_on_drive: bool = False, local: str | Path = LOCAL_DIR) -> Path:
    """Where a notebook's server keeps what visitors upload and the results it makes, created.

    Anyone with a public URL can upload: in Colab those images stay in the runtime (``local``,
    gone with it) rather than on your Google Drive, where they would take your quota and sit among
    your files, unless ``keep_on_drive``. Elsewhere, and with ``keep_on_drive``: ``work``.
    """
    folder = Path(work) if keep_on_drive or not in_colab() else Path(local).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def input_path(value: str | Path, work: Path) -> Path:
    """A path typed into a notebook form: relative ones are inside ``work``; ``/content/drive/...`` mounts Drive.

    Raises:
        ConfigError: the value is empty.
    """
    text = str(value).strip()
    if not text:
        raise ConfigError("no path given: fill in the form field")
    path = Path(text).expanduser()
    if in_colab() and (path == DRIVE_ROOT or DRIVE_ROOT in path.parents) and not (DRIVE_ROOT / "MyDrive").is_dir():
        mount_drive()
    return path if path.is_absolute() else Path(work) / path


def _missing_hint(field: str, path: Path, writer: str) -> str:
    where = (" In Colab each notebook runs in its own runtime: tick USE_DRIVE in both notebooks so that the "
             "files outlive the runtime that wrote them." if in_colab() and DRIVE_ROOT not in path.parents else "")
    return (f"{field} '{path}' does not exist: run {writer} first (it prints the value to paste here), "
            f"or give a path relative to the work folder or under /content/drive/MyDrive.{where}")


def coco_inputs(train_json: str, val_json: str, work: Path) -> tuple[str, str]:
    """``TRAIN_JSON`` / ``VAL_JSON`` of 02's form, checked before training: absolute paths as strings.

    Raises:
        ConfigError: a file is missing (the message says which notebook writes it).
    """
    train = input_path(train_json, work)
    if not train.is_file():
        raise ConfigError(_missing_hint("TRAIN_JSON", train, "01_prepare_dataset"))
    if not str(val_json).strip():
        return str(train), ""
    val = input_path(val_json, work)
    if not val.is_file():
        raise ConfigError(_missing_hint("VAL_JSON", val, "01_prepare_dataset"))
    return str(train), str(val)


def test_input(test_json: str, work: Path) -> str:
    """``TEST_JSON`` of 02's form (a held-out test set for the comparison), checked: an absolute path, or ""
    when the field is empty.

    Raises:
        ConfigError: the file is missing (the message says which notebook writes it).
    """
    if not str(test_json).strip():
        return ""
    test = input_path(test_json, work)
    if not test.is_file():
        raise ConfigError(_missing_hint("TEST_JSON", test, "01_prepare_dataset with TEST_SPLIT"))
    return str(test)


def model_input(model_dir: str, work: Path) -> Path:
    """``MODEL_DIR`` of 03's form, checked before anything starts; ``"coco"`` is torchvision's COCO-trained
    Mask R-CNN (80 classes, no training of yours), made into a model folder under ``work/models`` once
    (its weights downloaded once, with a progress bar and their checksum checked).

    Raises:
        ConfigError: the folder or its ``model.json`` is missing.
        WeightsUnavailableError: ``coco`` offline, with the file to put where.
    """
    from maskrcnn_finetune.coco_model import COCO_MODEL, coco_model_dir
    from maskrcnn_finetune.model_dir import MODEL_JSON

    if str(model_dir).strip().lower() == COCO_MODEL:
        return coco_model_dir(Path(work) / "models")
    path = input_path(model_dir, work)
    if not (path / MODEL_JSON).is_file():
        if path.is_dir():
            raise ConfigError(f"MODEL_DIR '{path}' has no {MODEL_JSON}: its training run did not finish; run "
                              "02_finetune_and_compare again (it resumes), or give the folder of a finished run")
        raise ConfigError(_missing_hint("MODEL_DIR", path, "02_finetune_and_compare"))
    return path


def _when(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M")


def _shown(path: Path, work: Path) -> str:
    return str(path.relative_to(work)) if path.is_relative_to(work) else str(path)


def latest_dataset(work: Path) -> dict[str, Path] | None:
    """The newest data set 01_prepare_dataset converted into ``work/coco``: ``{"train": json, "val": ..., "test": ...}``
    (the splits it has), or None when there is none."""
    found = [p for p in (Path(work) / CONVERTED_DIR).glob("*/train.json") if p.is_file()]
    if not found:
        return None
    newest = max(found, key=lambda p: p.stat().st_mtime).parent
    splits = {split: newest / f"{split}.json" for split in ("train", "val", "test")}
    return {split: path for split, path in splits.items() if path.is_file()}


def pick_training_data(train_json: str, val_json: str, test_json: str, work: Path) -> tuple[str, str, str] | None:
    """02's ``TRAIN_JSON`` / ``VAL_JSON`` / ``TEST_JSON``, checked: absolute paths as strings ("" for none).

    An empty ``TRAIN_JSON`` takes the newest data set 01_prepare_dataset converted into the work folder,
    with its val and test splits where those fields are empty too, and says which.

    Returns:
        The three paths, or None when ``TRAIN_JSON`` is empty and 01 converted nothing here.

    Raises:
        ConfigError: a file given is missing (the message says which notebook writes it).
    """
    work = Path(work)
    if str(train_json).strip():
        train, val = coco_inputs(train_json, val_json, work)
        return train, val, test_input(test_json, work)
    found = latest_dataset(work)
    if found is None:
        logger.info("TRAIN_JSON is empty and 01_prepare_dataset has converted no data set into %s: training on "
                    "synthetic shapes made here", work / CONVERTED_DIR)
        return None
    folder = found["train"].parent
    given_val = coco_inputs(str(found["train"]), val_json, work)[1] if str(val_json).strip() else ""
    val = given_val or str(found.get("val", ""))
    test = test_input(test_json, work) or str(found.get("test", ""))
    logger.info("TRAIN_JSON is empty: training on the newest data set 01_prepare_dataset converted, %s (%s, "
                "converted %s); give TRAIN_JSON to choose another", _shown(folder, work),
                ", ".join(f"{s}.json" for s in found), _when(found["train"]))
    return str(found["train"]), val, test


def latest_model(work: Path, exclude: Path | None = None) -> Path | None:
    """The newest finished model folder trained in ``work`` (``runs/*`` of 00 and 02, ``rounds/*/model`` of 04;
    not the demo model or the comparison's), or None. ``exclude``: a folder never to return."""
    from maskrcnn_finetune.model_dir import MODEL_JSON

    skip = Path(exclude).resolve() if exclude else None
    found = [p.parent for pattern in MODEL_FOLDERS for p in Path(work).glob(f"{pattern}/{MODEL_JSON}")
             if p.parent.resolve() != skip]
    return max(found, key=lambda folder: (folder / MODEL_JSON).stat().st_mtime) if found else None


def pick_model(model_dir: str, work: Path, exclude: Path | None = None) -> Path | None:
    """``MODEL_DIR`` of 03's and 04's forms, checked (as :func:`model_input`); empty: the newest model trained in the
    work folder (:func:`latest_model`), said which.

    Returns:
        The model folder, or None when the field is empty and no model was trained here (the
        notebook then trains a demo model).

    Raises:
        ConfigError: the folder or its ``model.json`` is missing.
    """
    from maskrcnn_finetune.model_dir import MODEL_JSON

    if str(model_dir).strip():
        return model_input(model_dir, work)
    found = latest_model(work, exclude)
    if found is None:
        logger.info("MODEL_DIR is empty and no finished model was trained in %s (02_finetune_and_compare writes "
                    "runs/RUN_NAME): a demo model on synthetic shapes comes first", work)
        return None
    logger.info("MODEL_DIR is empty: using the newest model trained in the work folder, %s (finished %s); give "
                "MODEL_DIR to choose another", _shown(found, Path(work)), _when(found / MODEL_JSON))
    return found


def run_dir(work: Path, *parts: str) -> Path:
    """A training run's folder named by what makes it different (``runs/synthetic_demo``): a changed dataset or
    preset starts a new run instead of being refused as a resume of another one."""
    name = "_".join(str(p).strip().replace(" ", "-").replace("/", "-") for p in parts if str(p).strip())
    return Path(work) / "runs" / (name or "run")


def dataset_source(source: str, path_or_url: str, work: Path) -> str | Path:
    """What 01's ``SOURCE`` form field points at: ``"synthetic"`` or ``"balloon"`` as they are, a folder, a ``.zip``
    or a zip URL, or the uploaded data (asked for here: the browser's file picker, in a fresh folder of
    ``work/label_uploads`` each time).

    Raises:
        ConfigError: ``path or URL`` with an empty ``PATH_OR_URL``, or an empty upload.
    """
    if source in ("synthetic", "balloon"):
        return source
    if source == "upload":
        return upload_files(Path(work) / "label_uploads")
    if not str(path_or_url).strip():
        raise ConfigError("PATH_OR_URL is empty: give a labelme folder (e.g. /content/drive/MyDrive/my_labels), "
                          "a .zip path or a zip URL; or choose SOURCE 'upload' or 'synthetic'")
    text = str(path_or_url).strip()
    return text if "://" in text else input_path(text, work)


def dataset_name(data: str | Path) -> str:
    """The name of a data set's folder under ``coco/``: the zip's or folder's name (or the URL's last part), made
    safe (``My labels.zip`` -> ``My-labels``); ``synthetic`` and ``balloon`` as they are."""
    text = str(data).strip().rstrip("/")
    name = Path(unquote(urlparse(text).path) if "://" in text else text).name
    name = name[:-4] if name.lower().endswith(".zip") else name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-._") or "dataset"


def fresh_folder(parent, prefix: str = UPLOAD_PREFIX) -> Path:
    """A new, empty folder in ``parent`` named by the time (``upload-2025-01-31_14-05-09``), created."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    for n in range(1000):
        folder = Path(parent) / f"{prefix}{stamp}{f'_{n}' if n else ''}"
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(f"no free folder name for {prefix}{stamp} in {parent}")


def upload_files(parent) -> Path:
    """Asks the browser for files (Colab's upload button) and keeps them in a fresh folder of ``parent``.

    Each upload gets its own folder (:func:`fresh_folder`), so that files uploaded again (corrected
    labels) are never read together with an earlier upload's. Colab writes the files itself
    (``files.upload(target_dir=...)``). One ``.zip`` is unpacked beside itself.

    Returns:
        The folder with the data: the zip's contents (its single top folder when it has one), or
        the uploaded files (labelme ``.json`` files picked with their images).

    Raises:
        ConfigError: outside Colab, or nothing was uploaded (the dialog was cancelled).
        DatasetError: the zip is broken or unsafe.
    """
    if not in_colab():
        raise ConfigError("uploading from the browser works in Colab only; give a folder or .zip in PATH_OR_URL")
    from google.colab import files  # only exists in Colab

    from maskrcnn_finetune.data.download import fetch_source

    dest = fresh_folder(parent)
    saved = [Path(name) for name in files.upload(target_dir=str(dest))]
    if not saved:
        dest.rmdir()
        raise ConfigError("nothing was uploaded (the dialog was cancelled or no file was picked): run the cell again "
                          "and pick a .zip of your labelme folder, or put the folder on Google Drive and give its "
                          "path in PATH_OR_URL")
    size = sum(p.stat().st_size for p in saved)
    if size > BIG_UPLOAD_BYTES:
        logger.warning("%.0f MB uploaded through the browser: next time put the data on Google Drive and give its "
                       "folder in PATH_OR_URL (much faster, and it stays for the next runtime)", size / 2**20)
    zips = [p for p in saved if p.suffix.lower() == ".zip"]
    if len(zips) == 1 and len(saved) == 1:
        return fetch_source(zips[0], dest)
    if zips:
        raise ConfigError(f"{len(saved)} files were uploaded, {len(zips)} of them .zip: upload one .zip of the labelme "
                          "folder, or the .json files with their images (no zip)")
    return dest


def offer_download(path) -> Path:
    """Hands a file to the browser (Colab's download), or says where it is outside Colab.

    Raises:
        FileNotFoundError: the file does not exist (as Colab's ``files.download``).
    """
    path = Path(path)
    if in_colab():
        from google.colab import files  # only exists in Colab

        files.download(str(path))
        print(f"{path.name} ({path.stat().st_size / 2**20:.1f} MB) goes to your browser's downloads")
    else:
        if not path.exists():
            raise FileNotFoundError(f"Cannot find file: {path}")
        print(f"ready: {path}")
    return path


def sample_image(model_dir, fallback_dir) -> Path:
    """An image to send to a model: the first of its own validation set when that is still there.

    Otherwise a synthetic shapes image made in ``fallback_dir``.
    """
    from maskrcnn_finetune.data.coco import load_coco
    from maskrcnn_finetune.errors import DatasetError
    from maskrcnn_finetune.model_dir import read_model_info

    training = read_model_info(model_dir).get("training") or {}
    for key in ("val_json", "train_json"):
        if training.get(key) and Path(training[key]).is_file():
            try:
                coco = load_coco(training[key])
            except DatasetError as exc:
                logger.info("cannot use %s for a sample image: %s", training[key], exc)
                continue
            for image in coco.images:
                if coco.image_path(image).is_file():
                    return coco.image_path(image)
    from maskrcnn_finetune.data.synthetic import make_synthetic

    logger.info("the model's own images are not here; sending a synthetic shapes image instead")
    return make_synthetic(Path(fallback_dir), 1, seed=123)[0].with_suffix(".jpg")

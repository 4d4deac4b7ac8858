"""The runtime a model folder was given on this machine, remembered so that a start pays for the choice once.

Choosing a runtime (:func:`maskrcnn_finetune.loading.load_predictor`: OpenVINO compiled, int8 quantised,
both checked against the plain model and timed) costs seconds to minutes at every start of a server or
of batch prediction. The decision only changes when its inputs do, so it is stored with what it was
made for (:func:`decision_key`):

- the model: the sha256 of its weights and of its ``model.json``;
- the machine: the CPU's name, torch's thread count, the versions of torch, OpenVINO, NNCF and the kit;
- the question: the runtime asked for, the device, the fast path, and the images the checks used.

An entry is a json file (the choice, and the int8 backbone it chose, as OpenVINO IR) in
``MODEL_DIR/.runtime-cache/``, or where the model folder cannot be written (a read-only mount, as in
the container) in the user's cache folder (``$MRCNN_CACHE_DIR``, else ``$XDG_CACHE_HOME`` or
``~/.cache``, then ``maskrcnn_finetune/runtime/``). An entry made for other inputs, or one that cannot be
read, is ignored with a log line and replaced. ``MRCNN_RUNTIME_CACHE=0`` turns the cache off.

    cache = RuntimeCache.for_model(model_dir, decision_key(model_dir, asked="auto", device="cpu"))
    choice = cache.load()            # None: decide, then cache.store(choice)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from maskrcnn_finetune import __version__
from maskrcnn_finetune.cli import is_true
from maskrcnn_finetune.files import write_json_atomic
from maskrcnn_finetune.model_format import MODEL_JSON, WEIGHTS

try:
    import fcntl
except ImportError:  # Windows: no lock, each process decides
    fcntl = None

__all__ = ["CACHE_ENV", "CACHE_FOLDER", "CACHE_ROOT_ENV", "RuntimeCache", "cpu_name", "decision_key",
           "describe_images"]

logger = logging.getLogger(__name__)

CACHE_FOLDER = ".runtime-cache"
"""The folder of a model folder that holds its cached runtime decisions."""
CACHE_ENV = "MRCNN_RUNTIME_CACHE"
"""``0`` (or ``false``, ``off``, ``no``) turns the cache off: every start decides again."""
CACHE_ROOT_ENV = "MRCNN_CACHE_DIR"
"""The user cache folder of the kit, where a read-only model folder's decisions go."""
ENTRY_VERSION = 1


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what :mod:`platform` says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _sha256(path: Path) -> str | None:
    """The sha256 of a file's bytes (None where there is no such file)."""
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def describe_images(images) -> str | list | None:
    """What a cache key says of images given to the checks: ``None`` (the model's own), paths as resolved
    text (with their sizes and times), arrays by the sha256 of their bytes."""
    if images is None:
        return None
    if isinstance(images, (str, Path, np.ndarray)):
        images = [images]
    described = []
    for item in images:
        if isinstance(item, np.ndarray):
            described.append("sha256:" + hashlib.sha256(np.ascontiguousarray(item).tobytes()).hexdigest())
        elif isinstance(item, (str, Path)):
            path = Path(item).resolve()
            stat = path.stat() if path.exists() else None
            described.append(f"{path}" + (f" ({stat.st_size} bytes, mtime {stat.st_mtime_ns})" if stat else ""))
        else:  # a PIL image
            described.append("sha256:" + hashlib.sha256(np.asarray(item).tobytes()).hexdigest())
    return described


def decision_key(model_dir, **question) -> dict:
    """What a runtime decision of ``model_dir`` depends on (see the module's text); ``question``: the runtime
    asked for, the device and the checks' inputs, as json-able values."""
    import torch

    model_dir = Path(model_dir)
    return {
        "weights_sha256": _sha256(model_dir / WEIGHTS),
        "model_json_sha256": _sha256(model_dir / MODEL_JSON),
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "openvino": _version("openvino"), "nncf": _version("nncf"),
                     "maskrcnn_finetune": __version__},
        **question,
    }


def _user_cache_root() -> Path:
    if os.environ.get(CACHE_ROOT_ENV):
        return Path(os.environ[CACHE_ROOT_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "maskrcnn_finetune"


def _writable(folder: Path) -> bool:
    """Whether files can be written in ``folder`` (created when missing)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False


class RuntimeCache:
    """The cached decision of one question (one runtime asked) about one model folder.

    Args:
        folders: where an entry may be, the first one written to; an entry is looked for in each.
        name: the entry's name (the runtime asked for).
        key: what the decision depends on (:func:`decision_key`).
    """

    def __init__(self, folders: list[Path], name: str, key: dict) -> None:
        self.folders = folders
        self.name = name
        self.key = key
        self.folder: Path | None = None  # where the entry read (or to be written) lies

    @classmethod
    def for_model(cls, model_dir, key: dict, name: str | None = None) -> "RuntimeCache | None":
        """The cache of ``model_dir`` (its own folder, else the user's cache), or None when it is turned off
        (:data:`CACHE_ENV`)."""
        if CACHE_ENV in os.environ and not is_true(os.environ[CACHE_ENV]):
            return None
        model_dir = Path(model_dir).resolve()
        user = _user_cache_root() / "runtime" / hashlib.sha256(str(model_dir).encode()).hexdigest()[:16]
        return cls([model_dir / CACHE_FOLDER, user], name or str(key.get("asked", "runtime")), key)

    def _entry(self, folder: Path) -> Path:
        return folder / f"{self.name}.json"

    def file(self, suffix: str) -> Path:
        """The path of a file of this entry (e.g. ``".int8.xml"``), in the folder it was read from or will be written to."""
        folder = self.folder or self.folders[0]
        return folder / f"{self.name}{suffix}"

    def load(self) -> dict | None:
        """The cached choice (with ``cached``: where and when it was decided), or None where there is none
        to use: missing, made for other inputs, or unreadable (each logged)."""
        for folder in self.folders:
            path = self._entry(folder)
            if not path.is_file():
                continue
            try:
                entry = json.loads(path.read_text())
                key, choice = entry["key"], entry["choice"]
                if entry.get("version") != ENTRY_VERSION or not isinstance(choice, dict) or "runtime" not in choice:
                    raise ValueError("not an entry this kit wrote")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                logger.warning("the cached runtime decision %s cannot be read (%s): ignored, deciding again", path, exc)
                continue
            if key != self.key:
                changed = sorted(k for k in set(key) | set(self.key) if key.get(k) != self.key.get(k))
                logger.info("the cached runtime decision %s was made for another %s: ignored, deciding again",
                            path, ", ".join(changed))
                continue
            missing = [name for name in entry.get("files", []) if not (folder / name).is_file()]
            if missing:
                logger.warning("the cached runtime decision %s lacks its file(s) %s: ignored, deciding again",
                               path, ", ".join(missing))
                continue
            self.folder = folder
            return {**choice, "cached": {"file": str(path), "decided": entry.get("decided")}}
        return None

    def prepare(self) -> Path | None:
        """The folder the entry will be written to (the first writable one), or None (logged) where none is."""
        for folder in self.folders:
            if _writable(folder):
                self.folder = folder
                return folder
        logger.warning("no folder to cache the runtime decision in (%s): the next start decides again",
                       ", ".join(map(str, self.folders)))
        return None

    @contextlib.contextmanager
    def deciding(self):
        """Held while this process reads, or makes and writes, the entry: another process asking the same
        question (``--workers``' processes start together) waits, then reads the entry this one wrote."""
        folder = self.prepare() if fcntl is not None else None
        if folder is None:
            yield
            return
        with open(folder / f"{self.name}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def store(self, choice: dict, files: list[str] = ()) -> Path | None:
        """Writes the entry (``choice``, and the names of its ``files`` already written next to it by
        :meth:`file`); returns its path, or None where nothing could be written."""
        folder = self.folder or self.prepare()
        if folder is None:
            return None
        entry = {"version": ENTRY_VERSION, "key": self.key, "decided": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "choice": {k: v for k, v in choice.items() if k != "cached"}, "files": list(files)}
        path = self._entry(folder)
        try:
            write_json_atomic(path, entry)
        except (OSError, TypeError, ValueError) as exc:
            logger.warning("the runtime decision could not be cached in %s (%s)", path, exc)
            return None
        logger.info("runtime decision cached in %s", path)
        return path

    def clear_files(self, suffixes: list[str]) -> None:
        """Removes this entry's files with these suffixes (before new ones are written)."""
        for suffix in suffixes:
            path = self.file(suffix)
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists():
                path.unlink()

"""labelme's own example annotations for the tests, fetched once from labelme's source distribution.

The tests that check the converter against real labelme files use the examples that ship in
labelme's source distribution on the package registry (``labelme-6.3.1.tar.gz``, pinned by its
sha256 below). The first test that needs them downloads that file with pip (so the user's pip
configuration applies: mirrors, certificates, proxies), checks its sha256 and unpacks only

    instance_segmentation/data_annotated/     labelme JSON (polygons, group ids, ``__ignore__``) + images
    instance_segmentation/data_dataset_coco/  what labelme's own labelme2coco.py wrote for them (the reference)
    instance_segmentation/labels.txt          labelme's labels file (``__ignore__``, ``_background_``, 20 VOC classes)
    bbox_detection/data_annotated/            rectangle-only annotations + images
    bbox_detection/labels.txt

into a cache outside the work tree: ``$MASKRCNN_FINETUNE_CACHE``, else
``$XDG_CACHE_HOME/maskrcnn-finetune``, else ``~/.cache/maskrcnn-finetune``, in a folder named
for the labelme version. Later runs find them there and need no network. To fetch them ahead
of time (a machine that goes offline later, a CI cache step)::

    python tests/labelme_examples.py      # prints the folder that holds them

Licence: the annotations are the labelme project's (wkentaro/labelme), GPL-3.0; the images are
from PASCAL VOC 2011. They are test data read from the cache, never copied into this
repository and never committed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

LABELME_VERSION = "6.3.1"
SDIST_SHA256 = "2947e0d8341a92faa7b3ee50cf4b672f838051c6bf24892526e95b64fd3a707e"
CACHE_ENV = "MASKRCNN_FINETUNE_CACHE"
FETCH_COMMAND = "python tests/labelme_examples.py"
# what is unpacked, relative to the sdist's examples/ folder (a folder: everything under it)
WANTED = (
    "instance_segmentation/data_annotated",
    "instance_segmentation/data_dataset_coco",
    "instance_segmentation/labels.txt",
    "bbox_detection/data_annotated",
    "bbox_detection/labels.txt",
)


class ExamplesUnavailable(RuntimeError):
    """The examples are not in the cache and could not be fetched; the message is one line naming the fix."""


def cache_root() -> Path:
    """The project's cache folder: ``$MASKRCNN_FINETUNE_CACHE``, else under ``$XDG_CACHE_HOME`` or ``~/.cache``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "maskrcnn-finetune"


def examples_dir(version: str = LABELME_VERSION, root: Path | None = None) -> Path:
    """Where the examples of labelme ``version`` live (or will live) in the cache."""
    return (root or cache_root()) / f"labelme-{version}-examples"


def fetch(version: str = LABELME_VERSION, sha256: str = SDIST_SHA256, root: Path | None = None) -> Path:
    """The folder holding labelme's examples, downloading and unpacking them first if the cache lacks them.

    Args:
        version: the labelme release whose source distribution holds the examples.
        sha256: the sha256 that release's ``.tar.gz`` must have; any other file is refused.
        root: the cache folder (default :func:`cache_root`).

    Returns:
        The folder with ``instance_segmentation/`` and ``bbox_detection/`` in it.

    Raises:
        ExamplesUnavailable: pip could not download the file, or it was not the pinned one.
    """
    target = examples_dir(version, root)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}-", dir=target.parent) as work:
        sdist = _download(version, Path(work) / "download", target)
        digest = _sha256(sdist)
        if digest != sha256:
            raise ExamplesUnavailable(
                f"{sdist.name} from the package registry has sha256 {digest}, not the pinned {sha256}: "
                f"it is not labelme {version}'s published source; check the pip index or mirror it came from, "
                f"then run `{FETCH_COMMAND}` again")
        unpacked = Path(work) / "examples"
        _extract(sdist, unpacked, f"labelme-{version}/examples/")
        try:
            unpacked.rename(target)  # atomic: a reader sees every file or no folder
        except OSError:
            if not target.is_dir():  # another run got there first otherwise: theirs is as good
                raise
    return target


def _download(version: str, dest: Path, target: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               f"labelme=={version}", "--dest", str(dest)]
    proc = subprocess.run(command, capture_output=True, text=True)
    found = sorted(dest.glob(f"labelme-{version}.tar.gz")) if dest.is_dir() else []
    if proc.returncode != 0 or not found:
        said = [line.strip() for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
        errors = [line for line in said if line.startswith("ERROR")] or said[-1:] or ["no output"]
        raise ExamplesUnavailable(
            f"labelme's example data (labelme {version}'s source distribution) is not in {target} and pip could "
            f"not download it ({errors[-1]}); where the package registry is reachable, run `{FETCH_COMMAND}` once "
            f"(or set {CACHE_ENV} to a cache folder that holds labelme-{version}-examples)")
    return found[0]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _extract(sdist: Path, out: Path, prefix: str) -> None:
    """Unpacks the members under ``prefix`` + one of :data:`WANTED`, without the prefix, into ``out``."""
    out.mkdir()
    with tarfile.open(sdist, "r:gz") as archive:
        members = []
        for member in archive.getmembers():
            if not member.name.startswith(prefix) or not (member.isfile() or member.isdir()):
                continue
            relative = member.name[len(prefix):]
            if any(relative == wanted or relative.startswith(wanted + "/") for wanted in WANTED):
                member.name = relative
                members.append(member)
        missing = [w for w in WANTED if not any(m.name == w or m.name.startswith(w + "/") for m in members)]
        if missing:
            raise ExamplesUnavailable(f"{sdist.name} lacks examples/{', examples/'.join(missing)}: "
                                      f"not the labelme release these tests were written for")
        # the "data" filter (no links, no absolute or ../ paths) where this Python has it
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        archive.extractall(out, members=members, **safe)


def examples_or_fail() -> Path:
    """For the test fixture: the examples' folder, or the test fails with the one-line reason (no traceback)."""
    import pytest

    try:
        return fetch()
    except ExamplesUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


def main() -> int:
    try:
        print(fetch())
    except ExamplesUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

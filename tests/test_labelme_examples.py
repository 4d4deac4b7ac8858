"""tests/labelme_examples.py: the pinned labelme sdist is fetched with pip, checked, unpacked once, and a
missing network or a wrong file gives one line that names the fix.

pip runs for real against a package folder the test builds (a stand-in ``labelme-6.3.1.tar.gz`` whose
in-tree build backend needs nothing from an index), with the machine's pip configuration switched off.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import labelme_examples
from labelme_examples import ExamplesUnavailable, examples_or_fail, fetch

VERSION = labelme_examples.LABELME_VERSION
BACKEND = '''
import os

def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    name = "labelme-{version}.dist-info"
    os.makedirs(os.path.join(metadata_directory, name))
    with open(os.path.join(metadata_directory, name, "METADATA"), "w") as fh:
        fh.write("Metadata-Version: 2.1\\nName: labelme\\nVersion: {version}\\n")
    return name

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    raise RuntimeError("only the metadata is built")
'''
FILES = {
    "examples/instance_segmentation/data_annotated/2011_000003.json": b'{"shapes": []}',
    "examples/instance_segmentation/data_annotated/2011_000003.jpg": b"\xff\xd8 not checked here",
    "examples/instance_segmentation/data_dataset_coco/annotations.json": b'{"images": []}',
    "examples/instance_segmentation/labels.txt": b"__ignore__\n_background_\nperson\n",
    "examples/instance_segmentation/labelme2coco.py": b"# left in the archive",
    "examples/bbox_detection/data_annotated/2011_000006.json": b'{"shapes": []}',
    "examples/bbox_detection/labels.txt": b"__ignore__\n_background_\ncar\n",
    "examples/bbox_detection/data_dataset_voc/class_names.txt": b"left in the archive",
    "examples/tutorial/apc2016_obj3.json": b"left in the archive",
    "labelme/__init__.py": b"",
}
# what the cache gets: the example folders and labels files, nothing else of the archive
WANTED_FILES = sorted([
    "instance_segmentation/data_annotated/2011_000003.json", "instance_segmentation/data_annotated/2011_000003.jpg",
    "instance_segmentation/data_dataset_coco/annotations.json", "instance_segmentation/labels.txt",
    "bbox_detection/data_annotated/2011_000006.json", "bbox_detection/labels.txt",
])


def _sdist(folder: Path) -> tuple[Path, str]:
    """A stand-in labelme sdist in ``folder`` (a pip --find-links folder); returns it and its sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    top = f"labelme-{VERSION}/"
    members = {
        "pyproject.toml": b'[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n',
        "backend.py": BACKEND.format(version=VERSION).encode(),
        "PKG-INFO": f"Metadata-Version: 2.1\nName: labelme\nVersion: {VERSION}\n".encode(),
        **FILES,
    }
    path = folder / f"labelme-{VERSION}.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(top + name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def pip_sees(monkeypatch):
    """pip with none of this machine's configuration: ``pip_sees(folder)`` offers only that folder's files,
    ``pip_sees(index=url)`` only that index."""
    for name in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL", "PIP_NO_INDEX", "PIP_CONSTRAINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")  # no pip.conf of the machine or the user
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "5")

    def offer(folder: Path | None = None, index: str | None = None) -> None:
        if folder is not None:
            monkeypatch.setenv("PIP_NO_INDEX", "1")
            monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
        if index is not None:
            monkeypatch.setenv("PIP_INDEX_URL", index)
    return offer


def _closed_port_index() -> str:
    """An index address nothing listens on: what pip meets on a machine without a network."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/simple/"


def test_the_pinned_sdist_is_fetched_checked_and_only_the_examples_unpacked_once(pip_sees, tmp_path):
    sdist, sha = _sdist(tmp_path / "packages")
    pip_sees(tmp_path / "packages")
    cache = tmp_path / "cache"
    got = fetch(sha256=sha, root=cache)
    assert got == cache / f"labelme-{VERSION}-examples"
    assert sorted(str(p.relative_to(got)) for p in got.rglob("*") if p.is_file()) == WANTED_FILES
    assert (got / "instance_segmentation" / "labels.txt").read_bytes() == FILES["examples/instance_segmentation/labels.txt"]
    assert sorted(p.name for p in cache.iterdir()) == [got.name]  # no download or half-unpacked folder left
    sdist.unlink()  # a second run needs neither pip nor the file
    assert fetch(sha256=sha, root=cache) == got


def test_a_file_with_another_sha256_is_refused_and_nothing_is_kept(pip_sees, tmp_path):
    _, sha = _sdist(tmp_path / "packages")
    pip_sees(tmp_path / "packages")
    cache = tmp_path / "cache"
    with pytest.raises(ExamplesUnavailable) as caught:
        fetch(root=cache)  # the real pin: the stand-in is not labelme's published file
    message = str(caught.value)
    assert f"labelme-{VERSION}.tar.gz from the package registry has sha256 {sha}" in message
    assert f"not the pinned {labelme_examples.SDIST_SHA256}" in message and "\n" not in message
    assert list(cache.iterdir()) == []


def test_without_a_network_the_fixture_fails_with_one_line_naming_the_command(pip_sees, tmp_path, monkeypatch):
    pip_sees(index=_closed_port_index())
    monkeypatch.setenv(labelme_examples.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(pytest.fail.Exception) as caught:
        examples_or_fail()
    assert caught.value.pytrace is False  # the reason alone, no traceback
    message = str(caught.value)
    assert "\n" not in message and message.startswith("labelme's example data")
    assert f"not in {tmp_path / 'cache' / f'labelme-{VERSION}-examples'}" in message
    assert "No matching distribution found for labelme==" in message  # pip's own reason
    assert "run `python tests/labelme_examples.py` once" in message and labelme_examples.CACHE_ENV in message
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []


def test_run_on_its_own_it_prints_the_folder_or_the_reason(pip_sees, tmp_path):
    script = Path(labelme_examples.__file__)
    cache = tmp_path / "cache"
    pip_sees(index=_closed_port_index())
    env_cache = {**os.environ, labelme_examples.CACHE_ENV: str(cache)}
    offline = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env_cache, timeout=120)
    assert offline.returncode == 1 and offline.stdout == ""
    assert offline.stderr.count("\n") == 1 and offline.stderr.startswith("error: labelme's example data")
    (cache / f"labelme-{VERSION}-examples").mkdir(parents=True)  # as a finished fetch leaves it
    ready = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env_cache, timeout=60)
    assert ready.returncode == 0 and ready.stdout == f"{cache / f'labelme-{VERSION}-examples'}\n"


def test_the_cache_is_the_users_not_the_work_tree(monkeypatch, tmp_path):
    monkeypatch.delenv(labelme_examples.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert labelme_examples.examples_dir() == tmp_path / "xdg" / "maskrcnn-finetune" / f"labelme-{VERSION}-examples"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert labelme_examples.cache_root() == tmp_path / "home" / ".cache" / "maskrcnn-finetune"
    monkeypatch.setenv(labelme_examples.CACHE_ENV, str(tmp_path / "mine"))
    assert labelme_examples.cache_root() == tmp_path / "mine"

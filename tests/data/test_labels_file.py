"""``--labels``: a labels file as labelme's examples and labelme2coco use it, or a comma-separated list."""

from __future__ import annotations

import json

import pytest

from maskrcnn_finetune.cli import run_cli
from maskrcnn_finetune.commands import labelme_to_coco
from maskrcnn_finetune.data.convert import read_labels
from maskrcnn_finetune.data.synthetic import make_synthetic
from maskrcnn_finetune.errors import ConfigError

# the form of labelme's examples/instance_segmentation/labels.txt: __ignore__ (id -1 in labelme2coco),
# _background_ (id 0), then the classes in id order from 1
LABELS_TXT = "__ignore__\n_background_\ntriangle\nkite\ncircle\nsquare\n"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A labelme folder of circles, squares and triangles."""
    folder = tmp_path_factory.mktemp("labels") / "labelme"
    make_synthetic(folder, 6, seed=5, image_size=(96, 80))
    return folder


def _categories(path) -> list[tuple[int, str]]:
    return [(c["id"], c["name"]) for c in json.loads(path.read_text())["categories"]]


def test_a_labels_file_gives_the_classes_in_its_order(shapes, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text(LABELS_TXT)
    assert read_labels(labels) == ["triangle", "kite", "circle", "square"]
    assert labelme_to_coco.main([str(shapes), str(tmp_path / "by_file"), "--val-fraction", "0",
                                 "--labels", str(labels)]) == 0
    data = json.loads((tmp_path / "by_file" / "dataset.json").read_text())
    assert _categories(tmp_path / "by_file" / "dataset.json") == [(1, "triangle"), (2, "kite"), (3, "circle"),
                                                                  (4, "square")]
    assert {a["category_id"] for a in data["annotations"]} == {1, 3, 4}  # no kite in the data: a class with 0
    # the same classes as a comma list give the same file
    assert labelme_to_coco.main([str(shapes), str(tmp_path / "by_list"), "--val-fraction", "0",
                                 "--labels", "triangle, kite,circle,square"]) == 0
    assert (tmp_path / "by_list" / "dataset.json").read_text().replace("by_list", "by_file") == \
        (tmp_path / "by_file" / "dataset.json").read_text()
    # a file with Windows line ends, blank lines and a byte-order mark reads the same
    labels.write_bytes(b"\xef\xbb\xbf" + LABELS_TXT.replace("\n", "\r\n\r\n").encode())
    assert read_labels(str(labels)) == ["triangle", "kite", "circle", "square"]
    assert read_labels("") is None and read_labels(None) is None


def test_a_label_of_the_data_missing_from_the_file_is_named(shapes, tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("__ignore__\n_background_\ncircle\nsquare\n")
    assert run_cli(labelme_to_coco.main, [str(shapes), str(tmp_path / "out"), "--labels", str(labels)]) == 2
    error = capsys.readouterr().err
    assert "label 'triangle' is not one of --labels (circle, square)" in error
    assert not (tmp_path / "out" / "train.json").exists()
    # as the comma list does
    assert run_cli(labelme_to_coco.main, [str(shapes), str(tmp_path / "out"), "--labels", "circle,square"]) == 2
    assert "label 'triangle' is not one of --labels (circle, square)" in capsys.readouterr().err
    # --skip-invalid leaves those shapes out, with either form
    assert run_cli(labelme_to_coco.main, [str(shapes), str(tmp_path / "kept"), "--labels", str(labels),
                                          "--val-fraction", "0", "--skip-invalid"]) == 0
    assert _categories(tmp_path / "kept" / "dataset.json") == [(1, "circle"), (2, "square")]


def test_bad_labels_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="the labels file '.*nope.txt' does not exist; pass the path of a labels.txt"):
        read_labels(tmp_path / "nope.txt")
    twice = tmp_path / "twice.txt"
    twice.write_text("_background_\ncat\ndog\ncat\n")
    with pytest.raises(ConfigError, match="names cat more than once; list each class once"):
        read_labels(twice)
    with pytest.raises(ConfigError, match="--labels 'cat,dog,dog' names dog more than once"):
        read_labels("cat,dog,dog")
    only = tmp_path / "only.txt"
    only.write_text("__ignore__\n_background_\n\n")
    with pytest.raises(ConfigError, match="names no class"):
        read_labels(only)
    assert read_labels("tv/monitor,person") == ["tv/monitor", "person"]  # a class name may hold a slash

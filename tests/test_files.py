"""Atomic writes: a reader sees the old file or the whole new one, never a part, and no litter."""

import json

import pytest

from maskrcnn_finetune.files import atomic_path, write_json_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    target = tmp_path / "model.json"
    write_json_atomic(target, {"version": 1})
    with pytest.raises(OSError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_text('{"version": 2, "cut')
            raise OSError("disk full")
    assert json.loads(target.read_text()) == {"version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json"]


def test_a_finished_write_replaces_the_file_and_creates_its_folder(tmp_path):
    target = tmp_path / "new" / "folder" / "results.json"
    write_json_atomic(target, [1, 2])
    write_json_atomic(target, {"a": 3})
    assert json.loads(target.read_text()) == {"a": 3}
    assert [p.name for p in target.parent.iterdir()] == ["results.json"]

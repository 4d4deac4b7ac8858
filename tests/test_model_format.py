"""model_format: the checked reading of a weights file."""

from __future__ import annotations

import argparse
import logging

import pytest
import torch

from maskrcnn_finetune.errors import CheckpointError, ModelDirError
from maskrcnn_finetune.model_format import read_weights


@pytest.fixture
def pickled(tmp_path):
    """A checkpoint holding a Python object beside its weights (as older detectron2 runs write)."""
    path = tmp_path / "odd.pth"
    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=0.1)}, path)
    return path


def test_plain_weights_are_read_without_a_word(tmp_path, caplog):
    path = tmp_path / "plain.pth"
    torch.save({"w": torch.arange(3.0)}, path)
    with caplog.at_level(logging.WARNING):
        state = read_weights(path)
    assert torch.equal(state["w"], torch.arange(3.0))
    assert not caplog.records


def test_python_objects_are_refused_unless_trusted(pickled):
    with pytest.raises(ModelDirError, match="is corrupt or not a weights file"):
        read_weights(pickled)
    with pytest.raises(CheckpointError, match="holds Python objects besides the weights.*pass --trust-checkpoint"):
        read_weights(pickled, error=CheckpointError, trust_hint="pass --trust-checkpoint")


def test_a_trusted_file_with_python_objects_is_read_in_full_and_said_so(pickled, caplog):
    with caplog.at_level(logging.WARNING, logger="maskrcnn_finetune"):
        checkpoint = read_weights(pickled, error=CheckpointError, trusted=True)
    assert torch.equal(checkpoint["model"]["w"], torch.ones(2)) and checkpoint["args"].lr == 0.1
    assert [r.getMessage() for r in caplog.records] == [
        f"{pickled} holds more than weights; loading it fully because it is trusted"]


def test_a_missing_or_damaged_file_is_named(tmp_path):
    with pytest.raises(ModelDirError, match="does not exist"):
        read_weights(tmp_path / "none.pth")
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a zip")
    with pytest.raises(ModelDirError, match="is corrupt or not a weights file"):
        read_weights(broken)

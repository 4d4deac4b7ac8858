"""Server fixtures: the tiny trained model, the app and its test client, and the real server process.

The ``server`` fixture starts ``rest_api_flask/flask_app.py`` (waitress) as its own process on a
free loopback port and waits for its ``Serving on http://...`` line, as a user or a notebook would.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn_finetune.predictor import Predictor
from rest_api_flask import create_app

from server_helpers import png_of, start_server, stop_server


@pytest.fixture(scope="session")
def model_dir(tiny_model, tmp_path_factory):
    """The tiny trained model (``tiny_model()``, shared with the other tests), in a folder of its own whose
    test-time settings keep the answers small and fast: at most 5 detections an image and fewer
    proposals (the weights do not depend on them), so inference takes tens of ms on a CPU."""
    out = tmp_path_factory.mktemp("server_model") / "m"
    shutil.copytree(tiny_model(), out)
    info = json.loads((out / "model.json").read_text())
    info["model"].update(detections_per_image=5, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=30)
    (out / "model.json").write_text(json.dumps(info))
    return out


@pytest.fixture(scope="session")
def predictor(model_dir):
    # one CPU thread: on a shared 2-core machine, torch's thread pool waiting on busy cores is
    # 10-20x slower than one thread for this tiny model (the server processes get OMP_NUM_THREADS=1)
    torch.set_num_threads(1)
    return Predictor.from_dir(model_dir, device="cpu")


@pytest.fixture(scope="session")
def sample_paths(tiny_coco):
    """The synthetic images (train and val) as files."""
    paths = []
    for split in ("train", "val"):
        data = json.loads(Path(tiny_coco[split]).read_text())
        paths += [Path(tiny_coco[split]).parent / img["file_name"] for img in data["images"]]
    return paths


@pytest.fixture(scope="session")
def sample_png(sample_paths) -> bytes:
    """One synthetic image as PNG bytes."""
    return png_of(np.array(Image.open(sample_paths[0]).convert("RGB")))


@pytest.fixture
def folders(tmp_path):
    upload, output = tmp_path / "uploads", tmp_path / "outputs"
    return upload, output


@pytest.fixture
def app(predictor, folders):
    """The app with the tiny model, threshold 0 (an untrained model scores low) and fresh folders."""
    upload, output = folders
    return create_app({"PREDICTOR": predictor, "UPLOAD_FOLDER": str(upload), "OUTPUT_FOLDER": str(output),
                       "THRESHOLD": 0.0, "WARMUP": False, "TESTING": True})


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    """The real server process (waitress, threads) with threshold 0, shared by a test module."""
    srv = start_server(model_dir, tmp_path_factory.mktemp("server"), "--threshold", "0")
    yield srv
    stop_server(srv)

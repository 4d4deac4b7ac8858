"""An image gets the same answer alone and under load, from the real server process.

The model runs on one dedicated inference thread (rest_api_flask.inference), whichever waitress
thread took the request. The served folder is the tiny model at a 512 px input, so on a CPU with
bf16 units the server runs it in bf16 (the precision where a different code path shows first, on
scores near each other); elsewhere it runs in fp32 and the test checks the same thing there.
The server keeps torch's two threads (no OMP_NUM_THREADS=1 here), so reductions run in parallel.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

from server_helpers import png_of, start_server, stop_server


@pytest.fixture(scope="module")
def served(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("load") / "m512"
    shutil.copytree(tiny_model(), folder)
    info = json.loads((folder / "model.json").read_text())
    info["model"].update(min_size=512, max_size=640, detections_per_image=20)
    (folder / "model.json").write_text(json.dumps(info))
    server = start_server(folder, tmp_path_factory.mktemp("load_srv"), "--threshold", "0", "--threads", "8",
                          env={"OMP_NUM_THREADS": "2"})
    yield server
    stop_server(server)


def _answer(url: str, png: bytes, name: str) -> tuple:
    """What the model said about one image, every number of it (ids and file links left out)."""
    response = requests.post(url + "/api/v1/predict", files={"image": (name, png)}, timeout=300)
    assert response.status_code == 200, response.text
    body = response.json()
    return tuple((i["class_name"], i["score"], tuple(i["box"]), i["mask_rle"]["counts"]) for i in body["instances"])


def test_the_same_image_gets_the_same_answer_alone_and_under_load(served, sample_paths):
    model = requests.get(served.url + "/api/v1/model", timeout=10).json()
    assert model["inference"]["fast"] is True, model  # the fast path, bf16 where the CPU has it
    print("served in", model["inference"]["precision"])
    pngs = [png_of(np.roll(np.array(Image.open(sample_paths[k % len(sample_paths)]).convert("RGB")), 7 * k, axis=1))
            for k in range(8)]
    alone = [_answer(served.url, png, f"alone{k}.png") for k, png in enumerate(pngs)]
    assert sum(len(a) for a in alone) > 8  # threshold 0: the untrained model's many close scores are all answered

    def client(k: int) -> list[tuple]:
        return [_answer(served.url, pngs[k], f"c{k}_{r}.png") for r in range(3)]

    for _ in range(2):  # repeated: 8 clients x 3 requests at once, twice
        with ThreadPoolExecutor(8) as pool:
            loaded = list(pool.map(client, range(8)))
        for k in range(8):  # one process, one path, the same pixels: the claim is bit for bit, order included
            assert loaded[k] == [alone[k]] * 3, f"image {k} answered differently under load"

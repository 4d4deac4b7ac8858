"""``--micro-batch``: requests that wait for the model together run in one model call, with answers equal to
one-by-one answers to float rounding; requests that cannot join (another threshold, another image size) run
on their own."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests
from PIL import Image

from rest_api_flask.inference import InferenceService

from detections import assert_same_detections
from server_helpers import png_of, start_server, stop_server


def _same_size_images(sample_paths, count: int, size=(320, 256)) -> list[np.ndarray]:
    """``count`` different images of one size (the synthetic ones resized, then shifted)."""
    return [np.roll(np.array(Image.open(sample_paths[k % len(sample_paths)]).convert("RGB").resize(size)), 5 * k,
                    axis=1) for k in range(count)]


def _assert_like(answer: dict, want, what: str) -> None:
    """One server answer against the Predictor's own, to float rounding, as sets: a batch rounds differently
    from one image alone, so tied scores come out in either order."""
    assert answer["num_instances"] == len(want), (answer["num_instances"], len(want))
    assert_same_detections(answer, want, score_atol=1e-4, box_atol=0.05, mask_iou=0.99, mask_pixels=2, what=what)


def test_micro_batched_answers_equal_one_by_one(model_dir, predictor, sample_paths, tmp_path):
    # a wait of 2 s lets the 8 clients' requests gather behind the first, however slow this machine is
    server = start_server(model_dir, tmp_path, "--threshold", "0", "--micro-batch", "8",
                          "--micro-batch-wait-ms", "2000")
    try:
        images = _same_size_images(sample_paths, 8)
        alone = [predictor(image, threshold=0.0) for image in images]  # one by one, in this process
        assert sum(len(a) for a in alone) >= 8

        def post(k: int) -> dict:
            response = requests.post(server.url + "/api/v1/predict", files={"image": (f"{k}.png", png_of(images[k]))},
                                     timeout=120)
            assert response.status_code == 200, response.text
            return response.json()

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(post, range(8)))
        counts = requests.get(server.url + "/api/v1/model", timeout=10).json()["micro_batch"]
        # the warm-up's call, then the 8 requests in fewer calls than images
        assert counts["max_images"] == 8 and counts["largest_call"] > 1, counts
        assert counts["images"] == 9 and counts["model_calls"] < 9, counts
        for k, (answer, want) in enumerate(zip(answers, alone)):
            _assert_like(answer, want, f"image {k}")
    finally:
        stop_server(server)


class _GatedPredictor:
    """The real Predictor, held at its first call until the test lets it go, recording every call's image count."""

    def __init__(self, predictor) -> None:
        self.predictor, self.calls = predictor, []
        self.entered, self.go = threading.Event(), threading.Event()

    def __call__(self, images, threshold=None):
        self.entered.set()
        assert self.go.wait(60), "the test never let the model go"
        self.calls.append((len(images) if isinstance(images, list) else 1, threshold))
        return self.predictor(images, threshold=threshold)

    def __getattr__(self, name):
        return getattr(self.predictor, name)


def test_only_requests_of_one_threshold_and_image_size_join_a_call(predictor, sample_paths):
    gated = _GatedPredictor(predictor)
    service = InferenceService(gated, micro_batch=3, micro_batch_wait_ms=0)
    small, large = _same_size_images(sample_paths, 5), _same_size_images(sample_paths, 1, size=(400, 300))
    requests_in_order = [([small[0]], 0.5),  # taken at once: the model holds it while the others queue
                         ([small[1]], 0.5), (large, 0.5), ([small[2]], 0.3), ([small[3]], 0.5), ([small[4]], 0.5)]
    answers: dict[int, tuple] = {}
    threads = []
    try:
        for k, (images, threshold) in enumerate(requests_in_order):
            thread = threading.Thread(target=lambda k=k, i=images, t=threshold: answers.__setitem__(
                k, service.predict(i, t)))
            thread.start()
            threads.append(thread)
            if k == 0:
                assert gated.entered.wait(30)
            else:  # each request queued before the next, so the queue's order is the list's
                deadline = time.monotonic() + 30
                while service.queued < k and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert service.queued == k
        gated.go.set()
        for thread in threads:
            thread.join(60)
    finally:
        gated.go.set()
        service.close()
    # the first alone (the queue was empty); then the three 320x256 requests at 0.5 together (micro_batch 3);
    # the 400x300 one alone; the one at threshold 0.3 alone
    assert gated.calls == [(1, 0.5), (3, 0.5), (1, 0.5), (1, 0.3)], gated.calls
    for k, (images, threshold) in enumerate(requests_in_order):
        (result,), _ = answers[k]
        want = predictor(images[0], threshold=threshold)
        assert_same_detections(result, want, score_atol=1e-4, what=f"request {k}")  # batched: as sets
    assert service.batch_counts == {"model_calls": 4, "images": 6, "largest_call": 3}

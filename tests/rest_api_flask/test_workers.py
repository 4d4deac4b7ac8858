"""``--workers 2``: two server processes on one port, each with its own model, serving each other's results."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import requests

from server_helpers import start_server, stop_server


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) is not serving either
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def _wait_gone(pids, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(_alive(pid) for pid in pids)


@pytest.fixture
def two_workers(model_dir, tmp_path):
    server = start_server(model_dir, tmp_path, "--threshold", "0", "--workers", "2")
    yield server
    stop_server(server)


def test_two_workers_answer_on_one_port_and_serve_each_others_results(two_workers, sample_png):
    server = two_workers
    workers = server.info["workers"]
    assert len(workers) == 2 and all(_alive(pid) for pid in workers) and server.info["pid"] not in workers
    seen = set()
    for _ in range(200):  # each request on a new connection: the kernel hands it to either worker
        seen.add(int(requests.get(server.url + "/health", timeout=10).headers["X-Worker-Pid"]))
        if seen == set(workers):
            break
    assert seen == set(workers)
    crossed = 0
    for k in range(6):
        made = requests.post(server.url + "/api/v1/predict", files={"image": (f"p{k}.png", sample_png)}, timeout=60)
        assert made.status_code == 200, made.text
        maker, body = int(made.headers["X-Worker-Pid"]), made.json()
        for _ in range(100):  # until the other worker answers for this result
            got = requests.get(server.url + body["links"]["result_json"], timeout=10)
            assert got.status_code == 200 and got.json()["id"] == body["id"]
            assert got.json()["num_instances"] == body["num_instances"]
            if int(got.headers["X-Worker-Pid"]) != maker:
                crossed += 1
                overlay = requests.get(server.url + body["links"]["overlay"], timeout=10)
                assert overlay.status_code == 200 and overlay.content[:8] == b"\x89PNG\r\n\x1a\n"
                break
    assert crossed == 6  # every result was served by the worker that did not make it


def test_sigterm_to_the_server_stops_its_workers_and_a_dead_worker_stops_the_server(model_dir, tmp_path):
    server = start_server(model_dir, tmp_path / "a", "--workers", "2")
    workers = server.info["workers"]
    os.kill(server.process.pid, signal.SIGTERM)  # the server only, not its process group
    assert server.process.wait(timeout=30) == 0
    assert _wait_gone(workers), "workers outlived the server"
    stop_server(server)

    server = start_server(model_dir, tmp_path / "b", "--workers", "2")
    first, second = server.info["workers"]
    os.kill(first, signal.SIGKILL)
    assert server.process.wait(timeout=30) != 0
    assert _wait_gone([second])
    assert any(f"worker {first} stopped" in line for line in server.lines), server.lines[-5:]
    stop_server(server)


def test_workers_not_serving_in_time_are_stopped_and_the_server_says_so(model_dir, tmp_path):
    # a second is far too short to import torch and load a model: the server stops both workers and exits
    result = subprocess.run([sys.executable, "-m", "rest_api_flask", "--model-dir", str(model_dir), "--port", "0",
                             "--infer-with-cpu", "--workers", "2", "--worker-start-timeout", "1"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path,
                            env={**os.environ, "NGROK_AUTHTOKEN": "", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2, result.stderr[-2000:]
    message = result.stderr.strip().splitlines()[-1]
    assert "were not serving after 1 s (--worker-start-timeout)" in message, result.stderr[-2000:]
    pids = [int(pid) for pid in re.search(r"workers ([\d, ]+) were", message).group(1).split(", ")]
    assert len(pids) == 2 and _wait_gone(pids), "workers outlived the refusal"


def test_workers_must_be_positive(model_dir, tmp_path):
    from rest_api_flask.config import ServeConfig, check_config
    from maskrcnn_finetune.errors import ConfigError

    with pytest.raises(ConfigError, match="--workers must be positive"):
        check_config(ServeConfig.from_argv(["--model-dir", str(model_dir), "--workers", "0"]))

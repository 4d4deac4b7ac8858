"""The launcher: the server as a background process (notebooks, tests), against the real server and a tiny model.

The model is the server tests' tiny model folder (``model_dir`` of this folder's conftest).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from maskrcnn_finetune.errors import KitError
from rest_api_flask.launcher import ServerStartError, server_command, start_server
from rest_api_flask.ready import read_ready

import cloudflared_stand_in
from rest_api_flask.launcher import start_notebook_server

from server_helpers import fake_ngrok_binary


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_command_line():
    cmd = server_command("m", "u", "o", port=5001, tunnel="ngrok", infer_with_cpu=True, threshold=0.3,
                         extra_args=["--api-key", "k"])
    assert cmd[:4] == [sys.executable, "-u", "-m", "rest_api_flask"]
    assert cmd[4:] == ["--model-dir", "m", "--upload-folder", "u", "--output-folder", "o", "--host", "127.0.0.1",
                       "--port", "5001", "--use-ngrok", "--infer-with-cpu", "--threshold", "0.3", "--api-key", "k"]
    assert server_command("m", "u", "o", ready_file="o/r.json")[-2:] == ["--ready-file", "o/r.json"]
    assert "--use-ngrok" not in server_command("m", "u", "o") and "--tunnel" not in server_command("m", "u", "o")
    for kind in ("cloudflared", "auto"):
        assert server_command("m", "u", "o", tunnel=kind)[-2:] == ["--tunnel", kind]
    with pytest.raises(KitError, match="colab.show_server"):  # Colab's proxy is asked for from the kernel
        server_command("m", "u", "o", tunnel="colab")


@pytest.mark.slow
def test_start_predict_stop(model_dir, tiny_coco, tmp_path, monkeypatch):
    monkeypatch.delenv("NGROK_AUTHTOKEN", raising=False)
    with start_server(model_dir, tmp_path / "up", tmp_path / "out", threshold=0.0) as server:
        assert server.running and server.public_url is None
        assert server.url == f"http://127.0.0.1:{server.port}"
        # what the launcher read: the server's own ready file, passed as --ready-file
        assert server.ready_path.parent == tmp_path / "out" and str(server.ready_path) in server.process.args
        assert read_ready(server.ready_path) == server.info and server.info["pid"] == server.process.pid
        assert server.info["tunnel"] == "none" and server.info["model"]
        assert server.health()["status"] == "ok"
        val = json.loads(tiny_coco["val"].read_text())
        image = tiny_coco["val"].parent / val["images"][0]["file_name"]
        with image.open("rb") as fh:
            answer = requests.post(f"{server.url}/api/v1/predict", files={"image": fh}, timeout=120).json()
        assert answer["image"]["width"] == val["images"][0]["width"]
        overlay = requests.get(server.url + answer["links"]["overlay"], timeout=60)
        assert overlay.status_code == 200 and overlay.content.startswith(b"\x89PNG")
        port = server.port
    assert not server.running and server.process.returncode == 0  # SIGTERM ends it cleanly
    assert _port_is_free(port) and not server.ready_path.exists()
    log = (tmp_path / "out" / "server.log").read_text()
    assert f"Serving on http://127.0.0.1:{port}" in log and "model warmed up" in log
    assert server.stop() == 0  # a second stop is harmless


@pytest.mark.slow
def test_a_server_that_cannot_start_says_why(tmp_path, monkeypatch):
    monkeypatch.delenv("NGROK_AUTHTOKEN", raising=False)
    with pytest.raises(ServerStartError) as info:
        start_server(tmp_path / "no_model", tmp_path / "up", tmp_path / "out", timeout=120)
    message = str(info.value)
    assert "exited with code 2" in message
    assert "does not exist" in message and "--model-dir" in message  # the server's own explanation
    assert str(tmp_path / "out" / "server.log") in message


@pytest.mark.slow
def test_without_a_tunnel_the_server_keeps_serving_locally(model_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("NGROK_AUTHTOKEN", raising=False)
    with start_server(model_dir, tmp_path / "up", tmp_path / "out", tunnel="ngrok", tunnel_timeout=120) as server:
        assert server.public_url is None
        assert "authtoken" in server.tunnel_error  # the server's advice: where to get one
        assert server.health()["status"] == "ok"
        assert "--use-ngrok" in server.process.args


@pytest.mark.slow
def test_a_server_that_does_not_answer_in_time_is_stopped(model_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("NGROK_AUTHTOKEN", raising=False)
    with pytest.raises(ServerStartError, match=r"did not signal that it serves within 1 s") as info:
        start_server(model_dir, tmp_path / "up", tmp_path / "out", timeout=1.0)  # loading the model takes longer
    assert "Fix the problem it names" in str(info.value)
    assert _children_with(str(tmp_path / "out")) == []  # the process was ended, not left behind


def _children_with(text: str) -> list[int]:
    """Child processes of this test run whose command line holds ``text`` (Linux /proc)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                status = (proc / "status").read_text()
            except OSError:
                continue
            ppid = int(re.search(r"PPid:\s+(\d+)", status).group(1))
            if text in cmdline and ppid == os.getpid():
                pids.append(int(proc.name))
    return pids


def _with_fake_agent(monkeypatch, tmp_path) -> None:
    """Servers started from here open their tunnel with the stand-in ngrok agent (no ngrok service here)."""
    binary, _ = fake_ngrok_binary(tmp_path, "ok")
    monkeypatch.setenv("PYNGROK_NGROK_PATH", str(binary))
    monkeypatch.setenv("HOME", str(tmp_path))


def _agents_of(pgid: int) -> list[int]:
    from rest_api_flask.registry import group_members

    return [pid for pid in group_members(pgid) if pid != pgid]


@pytest.mark.slow
def test_a_server_left_by_a_crashed_kernel_is_stopped_first(model_dir, tmp_path, monkeypatch):
    """A kernel killed with SIGKILL (no atexit) leaves its server and ngrok agent; the next start stops both."""
    _with_fake_agent(monkeypatch, tmp_path)
    kernel = ("import time\n"
              "from rest_api_flask.launcher import start_server\n"
              f"s = start_server({str(model_dir)!r}, {str(tmp_path / 'up1')!r}, {str(tmp_path / 'out1')!r}, "
              "tunnel='ngrok', ngrok_token='tok-1')\n"
              "print(s.port, s.process.pid, s.public_url, flush=True)\n"
              "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", kernel], stdout=subprocess.PIPE, text=True)
    port, old_pid, public = proc.stdout.readline().split()
    old_port, old_pid = int(port), int(old_pid)
    assert public.startswith("https://")  # the agent is up
    agents = _agents_of(old_pid)
    assert agents
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not _port_is_free(old_port) and _agents_of(old_pid)  # the crashed kernel's server and agent live on
    monkeypatch.delenv("NGROK_AUTHTOKEN", raising=False)
    with start_server(model_dir, tmp_path / "up2", tmp_path / "out2") as server:
        assert _port_is_free(old_port) and _agents_of(old_pid) == []
        assert server.health()["status"] == "ok"
    time.sleep(0.1)
    assert list(Path(os.environ["MRCNN_SERVER_REGISTRY"]).glob("*.json")) == []  # stopped servers are forgotten


@pytest.mark.slow
def test_stop_ends_the_server_and_its_agent(model_dir, tmp_path, monkeypatch):
    _with_fake_agent(monkeypatch, tmp_path)
    server = start_server(model_dir, tmp_path / "up", tmp_path / "out", tunnel="ngrok", ngrok_token="tok-1")
    assert server.public_url and _agents_of(server.process.pid)
    pgid = server.process.pid
    assert server.stop() == 0
    assert _agents_of(pgid) == []


@pytest.mark.slow
def test_notebook_server_without_a_token_gets_a_no_account_url(model_dir, tmp_path, monkeypatch, fake_cloudflared):
    monkeypatch.delenv("NGROK_AUTHTOKEN", raising=False)
    server = start_notebook_server(model_dir, tmp_path / "up", tmp_path / "out")
    try:
        args = server.process.args
        assert args[args.index("--tunnel") + 1] == "auto"
        assert server.info["public_via"] == "cloudflared" and server.public_url.endswith(".trycloudflare.com")
        started, opened = cloudflared_stand_in.notes(fake_cloudflared)
        assert opened["url"] == server.public_url and started["argv"][-1] == server.url
        assert requests.get(opened["forward"] + "/health", timeout=10).json()["status"] == "ok"
    finally:
        server.stop()
    assert not cloudflared_stand_in.alive(started["pid"])  # the tunnel goes with the server


@pytest.mark.slow
def test_notebook_server_order_ngrok_first_and_no_public_url_on_request(model_dir, tmp_path, monkeypatch,
                                                                         fake_cloudflared):
    _with_fake_agent(monkeypatch, tmp_path)
    monkeypatch.setenv("NGROK_AUTHTOKEN", "tok-env")  # what request_ngrok_token left in the kernel's environment
    with start_notebook_server(model_dir, tmp_path / "up", tmp_path / "out") as server:
        assert server.info["public_via"] == "ngrok" and server.public_url == "https://fake-tunnel.ngrok-free.app"
    assert cloudflared_stand_in.notes(fake_cloudflared) == []
    with start_notebook_server(model_dir, tmp_path / "up", tmp_path / "out", use_ngrok=False) as server:
        assert server.info["public_via"] == "cloudflared"  # USE_NGROK off: the no-account tunnel, token or not
    with start_notebook_server(model_dir, tmp_path / "up", tmp_path / "out", public=False) as server:
        assert server.info["tunnel"] == "none" and server.public_url is None

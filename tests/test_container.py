"""The container images: their Dockerfiles linted, and their exact entry command run here as a process.

No container runtime runs on this project's machines, so the image is not built here. What can be
checked is: hadolint accepts both Dockerfiles; the files they copy are enough to install the package;
and the image's CMD, with the image's ENV and the compose file's volumes mapped to folders here,
starts the server, which the image's own HEALTHCHECK command then finds healthy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = ["Dockerfile", "Dockerfile.cuda"]


def _instructions(path: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of a Dockerfile, continuation lines joined, comments left out."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                         if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip()) for line in text.splitlines()
            if line.strip()]


def _env(path: Path) -> dict:
    env = {}
    for kind, args in _instructions(path):
        if kind == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", args)))
    return env


def _exec_form(path: Path, kind: str) -> list[str]:
    args = [a for k, a in _instructions(path) if k == kind][-1]
    if kind == "HEALTHCHECK":
        args = args.split("CMD", 1)[1].strip()
    return json.loads(args)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_accepts_the_dockerfile(name):
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(ROOT / name)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_the_files_the_image_copies_are_enough_to_install_the_kit(tmp_path):
    context = tmp_path / "context"
    context.mkdir()
    for kind, args in _instructions(ROOT / "Dockerfile"):
        if kind == "COPY":
            *sources, _ = args.split()
            for pattern in sources:
                for source in ROOT.glob(pattern):
                    target = context / source.relative_to(ROOT)
                    if source.is_dir():
                        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
                    else:
                        shutil.copy(source, target)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                             str(tmp_path / "wheel"), str(context)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    wheel = next((tmp_path / "wheel").glob("*.whl"))
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "rest_api_flask/flask_app.py" in names and "rest_api_flask/static/web/app.js" in names
    assert "maskrcnn_finetune/predictor.py" in names


@pytest.mark.slow
@pytest.mark.parametrize("name", DOCKERFILES)
def test_the_image_command_serves_and_its_healthcheck_passes(name, tiny_model_dir, tmp_path):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = [v.split("}:")[-1].split(":")[0] for v in compose["services"]["server"]["volumes"]]
    assert mounts == ["/models/model", "/data"]  # where the compose file puts the model and the results
    # the container's folders, here: the model folder (read-only there) and an empty /data
    here = {"/models/model": str(tiny_model_dir), "/data": str(tmp_path / "data")}
    command = _exec_form(ROOT / name, "CMD")
    assert command[:3] in (["python", "-m", "rest_api_flask"], ["python3", "-m", "rest_api_flask"])
    for mount in mounts:
        assert any(arg.startswith(mount) for arg in command), f"{name}'s CMD does not use {mount}"
    mapped = [sys.executable] + [next((arg.replace(m, p, 1) for m, p in here.items() if arg.startswith(m)), arg)
                                 for arg in command[1:]]
    port = _free_port()
    env = {**os.environ, **_env(ROOT / name), "PORT": str(port), "OMP_NUM_THREADS": "1", "NGROK_AUTHTOKEN": ""}
    assert env["HOST"] == "0.0.0.0"  # reachable from outside the container
    if "--infer-with-cpu" not in mapped:
        mapped.append("--infer-with-cpu")  # the CUDA image on this machine without a GPU
    server = subprocess.Popen(mapped, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        healthcheck = _exec_form(ROOT / name, "HEALTHCHECK")
        healthcheck[0] = sys.executable
        deadline = time.monotonic() + 120
        while subprocess.run(healthcheck, env=env, capture_output=True, timeout=30).returncode != 0:
            assert server.poll() is None, server.stdout.read()
            assert time.monotonic() < deadline, "the HEALTHCHECK never passed"
            time.sleep(0.5)
        health = requests.get(f"http://127.0.0.1:{port}/health", timeout=10).json()
        assert health["status"] == "ok" and health["model_loaded"] is True
        assert (tmp_path / "data" / "uploads").is_dir() and (tmp_path / "data" / "outputs").is_dir()
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert server.returncode == 0, output
    assert f"Serving on http://0.0.0.0:{port}" in output

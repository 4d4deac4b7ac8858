"""The detectron2 install's checks before a build: a pinned commit, and torch's CUDA against nvcc's."""

from __future__ import annotations

import torch

from maskrcnn_finetune.modeling.detectron2 import install


def _nvcc(folder, release: str):
    """A stand-in nvcc on PATH (no CUDA toolkit here) that prints what the real one prints."""
    nvcc = folder / "nvcc"
    nvcc.write_text(f"#!/bin/sh\necho 'nvcc: NVIDIA (R) Cuda compiler driver'\n"
                    f"echo 'Cuda compilation tools, release {release}, V{release}.89'\n")
    nvcc.chmod(0o755)


def test_the_git_build_is_pinned():
    assert install.GIT_URL.endswith("@" + install.GIT_COMMIT) and len(install.GIT_COMMIT) == 40


def test_cuda_mismatch_is_found_before_building(tmp_path, monkeypatch):
    _nvcc(tmp_path, "11.8")
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    # this machine's torch is a CPU build: stand in for Colab's CUDA one (mocked: no CUDA here)
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    why = install.cuda_mismatch()
    assert "CUDA 12.4" in why and "nvcc is CUDA 11.8" in why
    monkeypatch.setattr(torch.version, "cuda", "11.8")
    assert install.cuda_mismatch() is None
    monkeypatch.setattr(torch.version, "cuda", None)  # a CPU torch builds without nvcc
    assert install.cuda_mismatch() is None


def test_an_installed_detectron2_is_kept(caplog):
    import logging

    with caplog.at_level(logging.INFO):
        version = install.install("auto")
    assert version and "nothing to do" in caplog.text

"""Install detectron2 into the running Python (the kit's one way, also for a pip-installed kit).

Usage:
    python -m maskrcnn_finetune.modeling.detectron2.install                  # auto: git, else the wheel
    python -m maskrcnn_finetune.modeling.detectron2.install --source git     # upstream (a pinned commit), compiled
    python -m maskrcnn_finetune.modeling.detectron2.install --source wheel   # Python-only code, no _C

Two ways in, for two kinds of user:

* ``git`` (for people training and serving models): upstream facebookresearch/detectron2 at
  :data:`GIT_COMMIT`, built with ``pip install --no-build-isolation`` once torch is installed
  (its setup.py imports torch). On Colab it compiles for a few minutes. ``auto`` first compares
  torch's CUDA with ``nvcc`` and falls back to the wheel when they differ or the build fails.
* ``wheel`` (offline tests, and the fallback): the Python code of the ``sal-detectron2==0.7.2``
  wheel (upstream's 2024 code; the wheel is tagged for CPython 3.10 and carries a ``_C``
  extension built for CUDA 12). The wheel is re-tagged ``py3-none-any`` without ``_C`` and
  without its dependency list (it pins ``numpy<2``), then installed with ``--no-deps`` beside
  the runtime packages detectron2 really imports. Upstream runs without ``_C`` since 2022:
  Mask R-CNN uses torchvision's RoIAlign and NMS.

Both are idempotent: an importable detectron2 of the asked kind is left as it is (``--force``
reinstalls). ``setuptools<81`` is kept because detectron2's model zoo imports ``pkg_resources``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.util
import logging
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

logger = logging.getLogger(__name__)

# A pinned upstream commit (2026-06-06): every runtime builds the same code. It has not been built
# here (no GitHub); the tests run detectron2's Python code from the wheel (--source wheel).
GIT_COMMIT = "02b5c4e295e990042a714712c21dc79b731e8833"
GIT_URL = f"git+https://github.com/facebookresearch/detectron2.git@{GIT_COMMIT}"
WHEEL_NAME = "sal-detectron2"
WHEEL_VERSION = "0.7.2"
# What detectron2's Mask R-CNN path imports at run time (its own metadata lists more, e.g.
# black and hydra, which the training and inference code here never reach).
RUNTIME_DEPS = ["fvcore>=0.1.5", "iopath>=0.1.7", "yacs>=0.1.8", "termcolor>=1.1", "tabulate", "cloudpickle",
                "omegaconf>=2.1,<2.4", "pyyaml", "setuptools<81"]


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    logger.info("running: %s", " ".join(cmd))
    subprocess.run(cmd, check=True)


def installed_version() -> str | None:
    """The version of the importable detectron2, or None when it cannot be imported."""
    if importlib.util.find_spec("detectron2") is None:
        return None
    result = subprocess.run([sys.executable, "-c", "import detectron2; print(detectron2.__version__)"],
                            capture_output=True, text=True)
    return result.stdout.strip() or None if result.returncode == 0 else None


def github_reachable(timeout: float = 3.0) -> bool:
    """Whether github.com answers on port 443 (Colab and most laptops; not offline CI)."""
    try:
        with socket.create_connection(("github.com", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def retag_wheel(wheel: Path, out_dir: Path) -> Path:
    """A ``py3-none-any`` copy of the sal-detectron2 wheel without ``_C`` and without dependencies.

    Args:
        wheel: the downloaded ``sal_detectron2-0.7.2-cp310-none-any.whl``.
        out_dir: where the new wheel is written.

    Returns:
        The path of the new wheel.
    """
    target = out_dir / f"sal_detectron2-{WHEEL_VERSION}-py3-none-any.whl"
    records = []
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst:
        record_name = None
        for item in src.infolist():
            name = item.filename
            if name.endswith(".dist-info/RECORD"):
                record_name = name
                continue
            if name.startswith("detectron2/_C."):  # compiled for CUDA 12 and CPython 3.10: unusable here
                continue
            data = src.read(name)
            if name.endswith(".dist-info/WHEEL"):
                lines = [line for line in data.decode().splitlines() if line.strip() and not line.startswith("Tag:")]
                text = "\n".join(lines).replace("Root-Is-Purelib: false", "Root-Is-Purelib: true")
                data = (text + "\nTag: py3-none-any\n").encode()
            elif name.endswith(".dist-info/METADATA"):
                # its list pins numpy<2 and pulls black, hydra, tensorboard: the runtime packages
                # are installed separately (RUNTIME_DEPS)
                data = b"".join(line for line in data.splitlines(keepends=True)
                                if not line.startswith(b"Requires-Dist:"))
            dst.writestr(item, data)
            records.append(f"{name},{_record_hash(data)},{len(data)}")
        if record_name is None:
            raise RuntimeError(f"{wheel} has no RECORD; is it really the {WHEEL_NAME} wheel?")
        records.append(f"{record_name},,")
        dst.writestr(record_name, "\n".join(records) + "\n")
    return target


def install_from_wheel() -> None:
    """Installs the runtime packages and the Python code of sal-detectron2 (offline-friendly)."""
    _pip("install", "--quiet", *RUNTIME_DEPS)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # the wheel is tagged cp310: ask for it as CPython 3.10 would, whatever runs this script
        _pip("download", "--quiet", "--no-deps", "--only-binary", ":all:", "--python-version", "3.10",
             "--dest", str(tmp), f"{WHEEL_NAME}=={WHEEL_VERSION}")
        wheels = list(tmp.glob("sal_detectron2-*.whl"))
        if not wheels:
            raise RuntimeError(f"pip downloaded no {WHEEL_NAME} wheel into {tmp}")
        (tmp / "retagged").mkdir()
        wheel = retag_wheel(wheels[0], tmp / "retagged")
        _pip("install", "--quiet", "--no-deps", "--force-reinstall", str(wheel))


def cuda_mismatch() -> str | None:
    """Why a CUDA build of detectron2 would fail here, or None when it can be tried.

    torch's CUDA major version and the ``nvcc`` that would compile the extension must agree
    (Colab updates them separately); without ``nvcc`` the build is CPU-only, which is fine.
    """
    import torch

    if torch.version.cuda is None or shutil.which("nvcc") is None:
        return None
    result = subprocess.run(["nvcc", "--version"], capture_output=True, text=True)
    match = re.search(r"release (\d+)\.(\d+)", result.stdout)
    if not match:
        return None
    if match.group(1) != torch.version.cuda.split(".")[0]:
        return (f"torch was built for CUDA {torch.version.cuda} but nvcc is CUDA {match.group(1)}.{match.group(2)}: "
                "the extension would not compile")
    return None


def install_from_git(url: str = GIT_URL, wheel_dir: Path | None = None) -> None:
    """Builds upstream detectron2 (a pinned commit) against the torch already installed.

    Args:
        url: the pip requirement to build.
        wheel_dir: keep the built wheel here (e.g. on Google Drive) and install from it next
            time, skipping the build; None builds and installs directly.
    """
    if importlib.util.find_spec("torch") is None:
        raise RuntimeError("install torch first: detectron2's setup.py imports it (pip install torch torchvision)")
    if wheel_dir is not None:
        wheel_dir = _build_folder(wheel_dir)
        wheels = sorted(wheel_dir.glob("detectron2-*.whl"))
        if wheels:
            logger.info("installing the detectron2 wheel built before: %s", wheels[-1])
            _pip("install", "--quiet", "setuptools<81", str(wheels[-1]))
            return
    _pip("install", "--quiet", "setuptools<81", "wheel", "ninja")
    if wheel_dir is None:
        _pip("install", "--no-build-isolation", url)
        return
    wheel_dir.mkdir(parents=True, exist_ok=True)
    _pip("wheel", "--no-build-isolation", "--no-deps", "--wheel-dir", str(wheel_dir), url)
    _pip("install", str(sorted(wheel_dir.glob("detectron2-*.whl"))[-1]))


def _build_folder(wheel_dir) -> Path:
    """A wheel's folder named by what it was compiled against: another Python or torch builds again."""
    import torch

    return Path(wheel_dir) / f"py{sys.version_info.major}{sys.version_info.minor}-torch{torch.__version__}"


def install(source: str = "auto", force: bool = False, wheel_dir: Path | None = None) -> str:
    """Installs detectron2: upstream ``git`` (compiled), the Python-only ``wheel``, or ``auto``.

    ``auto`` builds from git when GitHub answers and the CUDA versions agree, and falls back to
    the Python-only install when the build is not possible or fails.

    Returns:
        The installed version.

    Raises:
        RuntimeError: neither way installed an importable detectron2.
    """
    version = installed_version()
    # any detectron2 already here will do (the wheel's code says 0.7.2, upstream git 0.6): the
    # offline wheel must never replace a compiled upstream build
    if version is not None and not force:
        logger.info("detectron2 %s is already installed in %s; nothing to do (--force reinstalls)", version, sys.prefix)
        return version
    if source == "auto":
        why_not = None if github_reachable() else "GitHub is not reachable"
        why_not = why_not or cuda_mismatch()
        source = "wheel" if why_not else "git"
        logger.info("source: %s (%s)", source, why_not or "GitHub is reachable and the CUDA versions agree")
        fallback = source == "git"
    else:
        fallback = False
    try:
        install_from_wheel() if source == "wheel" else install_from_git(wheel_dir=wheel_dir)
    except subprocess.CalledProcessError as exc:
        if not fallback:
            raise RuntimeError(f"installing detectron2 from {source} failed ({exc}); "
                               f"try --source {'wheel' if source == 'git' else 'git'}") from exc
        logger.warning("building detectron2 failed (%s); installing its Python-only code instead "
                       "(Mask R-CNN runs with torchvision's ops)", exc)
        install_from_wheel()
    version = installed_version()
    if version is None:
        raise RuntimeError("detectron2 was installed but does not import; run `python -c 'import detectron2'` to see why")
    logger.info("detectron2 %s installed in %s", version, sys.prefix)
    return version


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=["auto", "git", "wheel"], default="auto",
                        help="git: upstream (users); wheel: offline Python-only install (tests); "
                             "auto: git when GitHub is reachable, else wheel")
    parser.add_argument("--force", action="store_true", help="reinstall even when detectron2 imports already")
    parser.add_argument("--wheel-dir", type=Path, help="keep the built wheel here (e.g. on Google Drive) and reuse it")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        install(args.source, force=args.force, wheel_dir=args.wheel_dir)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

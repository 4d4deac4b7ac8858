"""Install detectron2 into the active Python environment (the one running this script).

Usage:
    python scripts/install_detectron2.py                  # auto: upstream git if GitHub answers, else the wheel
    python scripts/install_detectron2.py --source git     # users (Colab, laptops): upstream, compiled here
    python scripts/install_detectron2.py --source wheel   # offline tests and CI: Python code only, no _C

Two ways in, for two kinds of user:

* ``git`` (for people training and serving models): upstream facebookresearch/detectron2 built
  with ``pip install --no-build-isolation git+https://github.com/facebookresearch/detectron2.git``
  once torch is installed (its setup.py imports torch). On Colab it compiles for a few minutes.
* ``wheel`` (for tests where only the package registry is reachable): the Python code of the
  ``sal-detectron2==0.7.2`` wheel (upstream's 2024 code; the wheel is tagged for CPython 3.10
  and carries a ``_C`` extension built for CUDA 12). The wheel is re-tagged ``py3-none-any``
  without ``_C`` and without its dependency list (it pins ``numpy<2``), then installed with
  ``--no-deps`` beside the runtime packages detectron2 really imports. Upstream runs without
  ``_C`` since 2022: Mask R-CNN uses torchvision's RoIAlign and NMS.

Both are idempotent: an importable detectron2 of the asked kind is left as it is (``--force``
reinstalls). ``setuptools<81`` is kept because detectron2's model zoo imports ``pkg_resources``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.util
import logging
import socket
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

logger = logging.getLogger("install_detectron2")

GIT_URL = "git+https://github.com/facebookresearch/detectron2.git"
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


def install_from_git() -> None:
    """Builds upstream detectron2 from GitHub against the torch already installed."""
    if importlib.util.find_spec("torch") is None:
        raise RuntimeError("install torch first: detectron2's setup.py imports it (pip install torch torchvision)")
    _pip("install", "--quiet", "setuptools<81", "wheel", "ninja")
    _pip("install", "--no-build-isolation", GIT_URL)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=["auto", "git", "wheel"], default="auto",
                        help="git: upstream (users); wheel: offline Python-only install (tests); "
                             "auto: git when GitHub is reachable, else wheel")
    parser.add_argument("--force", action="store_true", help="reinstall even when detectron2 imports already")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    source = args.source
    if source == "auto":
        source = "git" if github_reachable() else "wheel"
        logger.info("source: %s (%s)", source, "GitHub is reachable" if source == "git" else "GitHub is not reachable")
    version = installed_version()
    # any detectron2 already here will do (the wheel's code says 0.7.2, upstream git 0.6): the
    # offline wheel must never replace a compiled upstream build
    wanted_here = version is not None
    if wanted_here and not args.force:
        logger.info("detectron2 %s is already installed in %s; nothing to do (--force reinstalls)",
                    version, sys.prefix)
        return 0
    try:
        install_from_wheel() if source == "wheel" else install_from_git()
    except subprocess.CalledProcessError as exc:
        print(f"error: installing detectron2 from {source} failed ({exc}); "
              f"try --source {'wheel' if source == 'git' else 'git'}", file=sys.stderr)
        return 1
    version = installed_version()
    if version is None:
        print("error: detectron2 was installed but does not import; run "
              "`python -c 'import detectron2'` to see why", file=sys.stderr)
        return 1
    logger.info("detectron2 %s installed in %s", version, sys.prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the notebooks need from their surroundings: Colab or not, GPU, Drive, secrets, smoke mode.

Every Colab-only call is guarded here, so the same notebook cells run unchanged in Colab, in
Jupyter on a laptop, and under ``pytest --nbval-lax`` (where ``MRCNN_SMOKE=1`` shrinks the data,
the model and the schedule so that each notebook runs on a CPU in about a minute).
"""

from __future__ import annotations

import getpass
import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from maskrcnn_finetune.errors import ConfigError, KitError

logger = logging.getLogger(__name__)

SMOKE_ENV = "MRCNN_SMOKE"
WORK_DIR_ENV = "MRCNN_WORKDIR"  # where smoke runs write (a fresh temporary folder when unset)
NGROK_TOKEN_NAME = "NGROK_AUTHTOKEN"  # the environment variable and the Colab secret
DRIVE_ROOT = Path("/content/drive")
DETECTRON2_SOURCE = "git+https://github.com/facebookresearch/detectron2.git"

# The model of tests/training_options.py: a few iterations of a tiny Mask R-CNN on tiny images
# (the light backbone too: smoke mode tests the notebook's flow, not the backbone a form chose).
SMOKE_TRAINING = dict(
    backbone="mobilenetv2_fpnlite", detections_per_image=20, image_size=64, max_size=96, train_sizes=[],
    batch_size=2, max_iter=3, eval_period=100, log_period=1, box_batch_size_per_image=32, box_head_dim=64, mask_head_layers=[32], rpn_pre_nms_top_n_train=100,
    rpn_post_nms_top_n_train=50, pretrained="none", device="cpu", warmup_iters=1, lr=0.01,
)
SMOKE_SYNTHETIC = dict(n_images=8, image_size=(96, 80))


def in_colab() -> bool:
    """True inside a Google Colab runtime (its kernel has imported ``google.colab``)."""
    if "google.colab" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("google.colab") is not None
    except ModuleNotFoundError:  # no ``google`` namespace package at all
        return False


def smoke_mode() -> bool:
    """True when ``MRCNN_SMOKE`` is set to 1/true/yes: the notebooks' tiny test run."""
    return os.environ.get(SMOKE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def describe_runtime() -> str:
    """Where the notebook runs: Colab or not, torch, and the GPU it found (or how to get one).

    Returns:
        A few lines to print.
    """
    import torch

    where = "Google Colab" if in_colab() else f"a local Python {sys.version.split()[0]}"
    lines = [f"Running in {where} with torch {torch.__version__}."]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        lines.append(f"GPU: {props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}. "
                     "Training uses it (--device auto).")
    elif in_colab():
        lines.append("No GPU: training would run on the CPU and take hours. Choose Runtime > Change runtime type > "
                     "T4 GPU, then run the notebook again from the top.")
    else:
        lines.append("No GPU: training runs on the CPU; `--preset demo` is sized for that (about ten minutes).")
    if smoke_mode():
        lines.append(f"Smoke mode ({SMOKE_ENV}=1): synthetic data, a tiny model and a few iterations.")
    return "\n".join(lines)


def install_detectron2(source: str = DETECTRON2_SOURCE) -> bool:
    """Installs detectron2 in Colab (a compile of a few minutes); elsewhere only says how.

    Returns:
        True when detectron2 can be imported afterwards.
    """
    if importlib.util.find_spec("detectron2") is not None:
        return True
    if not in_colab():
        logger.warning("detectron2 is not installed; install it with `pip install '%s'` (needs a C++ compiler "
                       "and a CUDA toolkit matching torch), or choose the torchvision engine", source)
        return False
    # as scripts/install_detectron2.py --source git does (scripts/ is not part of an installed kit):
    # its setup.py imports torch, so build without isolation against Colab's own torch, and keep
    # setuptools<81 for the pkg_resources its model zoo imports
    pip = [sys.executable, "-m", "pip", "install"]
    try:
        subprocess.run(pip + ["--quiet", "setuptools<81", "wheel", "ninja"], check=True)
        logger.info("building detectron2 from %s: several minutes, pip's output follows", source)
        subprocess.run(pip + ["--no-build-isolation", source], check=True)  # not --quiet: a long build shows progress
    except subprocess.CalledProcessError as exc:
        raise KitError(f"installing detectron2 failed (pip exited with {exc.returncode}; its output is above). "
                       "Choose the torchvision engine, which needs no build, or try again on a GPU runtime") from None
    importlib.invalidate_caches()
    return importlib.util.find_spec("detectron2") is not None


def mount_drive(subdir: str = "maskrcnn-finetune") -> Path:
    """Mounts Google Drive (Colab asks for permission) and returns ``MyDrive/subdir``, created.

    Raises:
        ConfigError: not in Colab.
    """
    if not in_colab():
        raise ConfigError("Google Drive can only be mounted in Colab; untick USE_DRIVE, or give a local folder")
    from google.colab import drive  # only exists in Colab

    drive.mount(str(DRIVE_ROOT))
    folder = DRIVE_ROOT / "MyDrive" / subdir
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def work_dir(use_drive: bool = False, subdir: str = "maskrcnn-finetune", local: str | Path = "outputs") -> Path:
    """The folder a notebook writes its data, models and results to, created.

    Smoke mode: ``$MRCNN_WORKDIR`` or a new temporary folder. Otherwise Google Drive
    (``MyDrive/subdir``) when ``use_drive`` and in Colab, else ``local``. On Drive a model
    folder outlives a disconnected runtime, and training with ``resume=True`` picks it up.

    Args:
        use_drive: keep everything on Google Drive (Colab only; ignored with a warning elsewhere).
        subdir: the folder under ``MyDrive``.
        local: the folder used without Drive (relative to the notebook's working directory).

    Returns:
        The absolute folder.
    """
    if smoke_mode():
        folder = Path(os.environ.get(WORK_DIR_ENV) or tempfile.mkdtemp(prefix="mrcnn_smoke_"))
    elif use_drive and in_colab():
        folder = mount_drive(subdir)
    else:
        if use_drive:
            logger.warning("USE_DRIVE is only for Colab; writing to %s instead", Path(local).resolve())
        folder = Path(local)
    folder.mkdir(parents=True, exist_ok=True)
    return folder.resolve()


def training_options(**options) -> dict:
    """The notebook form's training options, shrunk to :data:`SMOKE_TRAINING` in smoke mode.

    Pass the result to :func:`maskrcnn_finetune.config.resolve_config` with a preset.
    """
    return {**options, **SMOKE_TRAINING} if smoke_mode() else options


def synthetic_options(n_images: int, image_size: tuple[int, int] = (320, 256)) -> dict:
    """``n_images`` and ``image_size`` for :func:`~maskrcnn_finetune.data.synthetic.make_synthetic`
    (8 tiny images in smoke mode)."""
    return dict(SMOKE_SYNTHETIC) if smoke_mode() else dict(n_images=n_images, image_size=tuple(image_size))


def _secret_errors() -> tuple[type[BaseException], ...]:
    from google.colab import userdata  # only exists in Colab

    names = ("SecretNotFoundError", "NotebookAccessError", "TimeoutException")
    return tuple(getattr(userdata, name) for name in names if hasattr(userdata, name))


def read_ngrok_token(ask: bool = True) -> str | None:
    """The ngrok authtoken, never from a cell's source: the environment, a Colab secret, or a prompt.

    Looks at ``$NGROK_AUTHTOKEN``, then the Colab secret ``NGROK_AUTHTOKEN`` (key icon in the
    left bar, with notebook access on), then asks with ``getpass`` when ``ask`` and in Colab.

    Returns:
        The token, or None when there is none (the server is then reached through Colab's
        proxy or on this machine only).
    """
    token = os.environ.get(NGROK_TOKEN_NAME, "").strip()
    if token:
        return token
    if not in_colab():
        return None
    from google.colab import userdata  # only exists in Colab

    try:
        token = (userdata.get(NGROK_TOKEN_NAME) or "").strip()
    except _secret_errors() as exc:
        logger.info("no usable Colab secret %s (%s)", NGROK_TOKEN_NAME, exc)
        token = ""
    if not token and ask:
        token = getpass.getpass("ngrok authtoken (https://dashboard.ngrok.com/get-started/your-authtoken; "
                                "Enter to skip and use Colab's proxy): ").strip()
    return token or None


def proxy_url(port: int) -> str | None:
    """Colab's own https address for a port of this runtime (reachable from your browser only), or None elsewhere.

    It has to be asked from the notebook's kernel, which is why the server process cannot do it.
    """
    if not in_colab():
        return None
    from google.colab.output import eval_js  # only exists in Colab

    return str(eval_js(f"google.colab.kernel.proxyPort({int(port)})"))


def upload_files(dest) -> list[Path]:
    """Asks the browser for files (Colab's upload button) and saves them in ``dest``; elsewhere returns [].

    Returns:
        The saved files, e.g. a labelme ``.zip`` for :func:`~maskrcnn_finetune.data.download.fetch_source`.
    """
    if not in_colab():
        logger.warning("uploading from the browser works in Colab only; give a folder or .zip path instead")
        return []
    from google.colab import files  # only exists in Colab

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    saved = []
    for name, data in files.upload().items():
        path = dest / Path(name).name  # never a path the browser chose
        path.write_bytes(data)
        saved.append(path)
    return saved


SMOKE_BACKBONES = ["mobilenetv2_fpnlite", "mobilenetv2_fpn"]


def comparison_backbones(names: str | list[str]) -> list[str]:
    """Backbone names from a form field (``"resnet50_fpn, vovnet19_fpn"``), checked; two light ones in smoke mode.

    Raises:
        ConfigError: a name is not registered (the message lists the registered ones).
    """
    from maskrcnn_finetune.modeling.backbones import BACKBONES

    if smoke_mode():
        return list(SMOKE_BACKBONES)
    chosen = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    unknown = [n for n in chosen if n not in BACKBONES]
    if unknown or not chosen:
        raise ConfigError(f"unknown backbone(s) {', '.join(unknown) or '(none given)'}; choose from: "
                          f"{', '.join(sorted(BACKBONES))}")
    return chosen


def demo_model(folder, max_iter: int | None = None) -> Path:
    """A model folder to try things with when you have none: synthetic shapes and ``--preset demo``.

    About ten minutes on a CPU, a minute on a GPU, seconds in smoke mode. An existing run in
    ``folder/model`` is resumed (or reused when finished).

    Returns:
        The model folder (``folder/model``).
    """
    from maskrcnn_finetune.config import resolve_config
    from maskrcnn_finetune.data.convert import convert_labelme
    from maskrcnn_finetune.data.synthetic import make_synthetic
    from maskrcnn_finetune.engines import train
    from maskrcnn_finetune.model_dir import MODEL_JSON

    folder = Path(folder)
    model_dir = folder / "model"
    if (model_dir / MODEL_JSON).is_file():
        logger.info("reusing the demo model in %s", model_dir)
        return model_dir
    make_synthetic(folder / "labelme", seed=0, **synthetic_options(60))
    data = convert_labelme(folder / "labelme", folder / "coco", val_fraction=0.2, seed=0)
    cfg = resolve_config("demo", **training_options(
        train_json=str(data.json_paths["train"]), val_json=str(data.json_paths["val"]),
        output_dir=str(model_dir), max_iter=max_iter, device="auto", resume=True))
    return train(cfg)

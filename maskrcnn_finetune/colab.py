"""What the notebooks need from the runtime they run in: Colab or not, GPU, logs, installs, secrets, serving.

Every Colab-only call is guarded here, so the same notebook cells run unchanged in Colab, in
Jupyter on a laptop, and under ``pytest --nbval-lax``. The notebook forms' values and the smoke
mode that shrinks them are in :mod:`maskrcnn_finetune.forms`; what the notebooks hand each other
(Drive, uploads, checked paths) is in :mod:`maskrcnn_finetune.handover`.
"""

from __future__ import annotations

import getpass
import importlib.util
import logging
import os
import subprocess
import sys

from maskrcnn_finetune.errors import KitError
from maskrcnn_finetune.forms import SMOKE_ENV, smoke_mode

logger = logging.getLogger(__name__)

NGROK_TOKEN_NAME = "NGROK_AUTHTOKEN"  # the environment variable and the Colab secret
LOGGERS = ("maskrcnn_finetune", "rest_api_flask")  # what show_logs prints in the notebook
PROXY_TIMEOUT_S = 10  # eval_js waits this long for the browser tab: a cell must never hang

def in_colab() -> bool:
    """True inside a Google Colab runtime (its kernel has imported ``google.colab``)."""
    if sys.modules.get("google.colab") is not None:
        return True
    try:
        return importlib.util.find_spec("google.colab") is not None
    except ModuleNotFoundError:  # no ``google`` namespace package at all
        return False


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
        lines.append("No GPU: training runs on the CPU; `--preset demo` is sized for that (minutes on two cores: "
                     "benchmarks/RESULTS.md, 'The demo recipe').")
    if smoke_mode():
        lines.append(f"Smoke mode ({SMOKE_ENV}=1): synthetic data, a tiny model and a few iterations.")
    return "\n".join(lines)


def show_logs(level: int = logging.INFO) -> None:
    """Shows the kit's log messages in the notebook's output (resume, evaluations, checksums, warnings).

    Library modules only log; a notebook calls this once, in its first cell. Calling it again
    changes nothing.
    """
    for name in LOGGERS:
        log = logging.getLogger(name)
        log.setLevel(level)
        if not any(getattr(h, "_kit_notebook", False) for h in log.handlers):
            handler = logging.StreamHandler(sys.stdout)
            handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
            handler._kit_notebook = True
            log.addHandler(handler)


def install_detectron2(wheel_dir=None) -> bool:
    """Installs detectron2 in Colab (a pinned upstream commit, a few minutes of compiling); elsewhere says how.

    Compares torch's CUDA with ``nvcc`` before building, and falls back to detectron2's
    Python-only code when they differ or the build fails (Mask R-CNN then uses torchvision's ops).

    Args:
        wheel_dir: keep the built wheel here (a folder on Drive) so that the next runtime
            installs it in seconds.

    Returns:
        True when detectron2 can be imported afterwards.
    """
    from maskrcnn_finetune.modeling.detectron2 import INSTALL_HINT, detectron2_available
    from maskrcnn_finetune.modeling.detectron2.install import install

    if detectron2_available():
        return True
    if not in_colab():
        logger.warning("detectron2 is not installed; install it with: %s; or choose the torchvision engine",
                       INSTALL_HINT)
        return False
    try:
        install("auto", wheel_dir=wheel_dir)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        raise KitError(f"installing detectron2 failed ({exc}); pip's output is above. Choose the torchvision "
                       "engine, which needs no build") from exc
    importlib.invalidate_caches()
    return detectron2_available()


def prepare_engine(model_dir, wheel_dir=None) -> str:
    """Reads which engine trained a model folder and installs what it needs (detectron2 for its models).

    Returns:
        The engine's name.

    Raises:
        KitError: the model needs detectron2 and it cannot be installed here.
    """
    from maskrcnn_finetune.model_dir import read_model_info
    from maskrcnn_finetune.modeling.detectron2 import INSTALL_HINT

    engine = read_model_info(model_dir).get("engine", "torchvision")
    if engine == "detectron2" and not install_detectron2(wheel_dir):
        raise KitError(f"'{model_dir}' was trained with detectron2, which is not installed in this Python: "
                       f"install it with {INSTALL_HINT}, or serve a model trained with the torchvision engine")
    return engine


def _secret_errors() -> tuple[type[BaseException], ...]:
    from google.colab import userdata  # only exists in Colab

    names = ("SecretNotFoundError", "NotebookAccessError", "TimeoutException")
    return tuple(getattr(userdata, name) for name in names if hasattr(userdata, name))


def colab_secret(name: str) -> str | None:
    """A Colab secret's value (key icon in the left bar), or None outside Colab, when it is missing,
    empty, or the notebook has no access to it."""
    if not in_colab():
        return None
    from google.colab import userdata  # only exists in Colab

    try:
        return (userdata.get(name) or "").strip() or None
    except _secret_errors() as exc:
        logger.info("no usable Colab secret %s (%s)", name, exc)
        return None


def read_ngrok_token(ask: bool = True) -> str | None:
    """The ngrok authtoken, never from a cell's source: the environment, a Colab secret, or a prompt.

    Looks at ``$NGROK_AUTHTOKEN``, then the Colab secret ``NGROK_AUTHTOKEN`` (key icon in the
    left bar, with notebook access on), then asks with ``getpass`` when ``ask`` and in Colab.

    Returns:
        The token, or None when there is none (the web page is then shown inside the notebook
        through Colab's proxy, and there is no public URL).
    """
    token = os.environ.get(NGROK_TOKEN_NAME, "").strip() or colab_secret(NGROK_TOKEN_NAME)
    if not token and ask and in_colab():
        token = getpass.getpass("ngrok authtoken (https://dashboard.ngrok.com/get-started/your-authtoken; "
                                "Enter to skip: no public URL, the page shows in the notebook): ").strip()
    return token or None


def request_ngrok_token() -> bool:
    """Asks for the ngrok authtoken once, in a notebook's settings cell, so that nobody has to be at the screen later.

    Reads it as :func:`read_ngrok_token` does (environment, Colab secret, then a prompt in Colab)
    and puts it into this kernel's ``$NGROK_AUTHTOKEN``, which every server the notebook starts
    inherits (``!python rest_api_flask/flask_app.py`` ones too). The token itself is never
    returned, so that it never lands in a notebook variable or output.

    Returns:
        True when a token is there.
    """
    token = read_ngrok_token(ask=True)
    if token:
        os.environ[NGROK_TOKEN_NAME] = token
    return token is not None


def proxy_url(port: int) -> str | None:
    """Colab's https address for a port of this runtime (for your browser only, while the notebook is open).

    Asked from the notebook's kernel with a timeout, so that a cell never hangs when the browser
    tab does not answer. None outside Colab or without an answer.
    """
    if not in_colab():
        return None
    from google.colab.output import eval_js  # only exists in Colab

    url = eval_js(f"google.colab.kernel.proxyPort({int(port)})", timeout_sec=PROXY_TIMEOUT_S)
    if not url:
        logger.warning("the browser tab did not answer within %d s with Colab's proxy address", PROXY_TIMEOUT_S)
    return str(url).rstrip("/") if url else None


def show_server(server, height: int = 720) -> str:
    """Says where the server can be reached, and shows its web page in the notebook when there is no public URL.

    * a public (ngrok) URL: printed, with the warnings that belong to it;
    * Colab without one: the page in an iframe of the cell's output (Colab's port proxy; the
      page's uploads work there, unlike in a new tab), and the proxy address for your browser;
    * elsewhere: the local address.

    Returns:
        The URL to use: public, Colab's proxy, or local.
    """
    if server.public_url:
        print(f"Public URL: {server.public_url}\n"
              "WARNING: anyone who has this URL can use the model (protect it with extra_args=['--api-key', KEY] "
              "or ['--auth', 'USER:PASSWORD']). ngrok's free plan shows a browser warning page once ('Visit Site'); "
              "API clients skip it with the header 'ngrok-skip-browser-warning: 1'. It lives as long as this "
              "runtime: for short demos, not for hosting.")
        return server.public_url
    if not in_colab():
        print(f"Open {server.url} (this machine only; a public URL needs an ngrok authtoken)")
        return server.url
    from google.colab.output import serve_kernel_port_as_iframe  # only exists in Colab

    serve_kernel_port_as_iframe(server.port, height=str(height))
    url = proxy_url(server.port)
    print("The web page is shown above, inside the notebook (Colab's proxy: for you only, while this notebook is "
          "open). A public URL needs an ngrok authtoken (Colab secret NGROK_AUTHTOKEN)." +
          (f" Proxy address: {url}" if url else ""))
    return url or server.url

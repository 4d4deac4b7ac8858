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


def in_notebook_kernel() -> bool:
    """True in the notebook's own kernel, where Colab's browser tab answers requests (secrets, ``eval_js``).

    False in a process the notebook started (a ``!python`` cell, a server in the background, a
    terminal): colabtools sends its requests through ``get_ipython().kernel``, which only the
    kernel has (``google.colab._ipython.in_ipython`` tests the same).
    """
    try:
        import IPython
    except ImportError:
        return False
    return hasattr(IPython.get_ipython(), "kernel")


def _secret_errors() -> tuple[type[BaseException], ...]:
    from google.colab import userdata  # only exists in Colab

    names = ("SecretNotFoundError", "NotebookAccessError", "TimeoutException")
    return tuple(getattr(userdata, name) for name in names if hasattr(userdata, name))


def colab_secret(name: str) -> str | None:
    """A Colab secret's value (key icon in the left bar), or None outside Colab, outside the notebook's
    kernel (where colabtools cannot reach the browser tab), when it is missing, empty, or the notebook
    has no access to it."""
    if not in_colab():
        return None
    if not in_notebook_kernel():
        logger.debug("Colab secret %s not read: secrets can only be read in the notebook's kernel", name)
        return None
    from google.colab import userdata  # only exists in Colab

    try:
        return (userdata.get(name) or "").strip() or None
    except _secret_errors() as exc:
        logger.info("no usable Colab secret %s (%s)", name, exc)
        return None


_asked_for_token = False  # request_ngrok_token prompts at most once per kernel
_token_requested = False  # request_ngrok_token has run in this kernel (a settings cell asked)


def token_requested() -> bool:
    """Whether :func:`request_ngrok_token` ran in this kernel (a notebook's settings cell asks up front)."""
    return _token_requested


def request_ngrok_token(ask: bool = True) -> bool:
    """Makes the ngrok authtoken available to every server this notebook starts; True when there is one.

    Looks at ``$NGROK_AUTHTOKEN``, then the Colab secret ``NGROK_AUTHTOKEN`` (key icon in the left
    bar, with notebook access on), then asks with ``getpass`` when ``ask``, in Colab, and not asked
    before in this kernel (Enter skips). The token goes into this kernel's ``os.environ``, which the
    processes it starts inherit (``start_server``, ``!python rest_api_flask/flask_app.py --use-ngrok``):
    it never lands in a notebook variable or output.

    Returns:
        Whether a token exists now (without one, the notebooks' servers use a no-account cloudflared
        tunnel, or show the page inside the notebook).
    """
    global _asked_for_token, _token_requested
    _token_requested = True
    token, source = os.environ.get(NGROK_TOKEN_NAME, "").strip(), "the environment"
    if not token:
        token, source = colab_secret(NGROK_TOKEN_NAME), f"the Colab secret {NGROK_TOKEN_NAME}"
    if not token and ask and in_colab() and not _asked_for_token:
        _asked_for_token = True
        token, source = getpass.getpass(
            "ngrok authtoken (https://dashboard.ngrok.com/get-started/your-authtoken; Enter to skip: a no-account "
            "cloudflared URL instead): ").strip(), "your answer"
    if not token:
        return False
    os.environ[NGROK_TOKEN_NAME] = token
    logger.info("ngrok authtoken from %s: servers started from this notebook get a public ngrok URL", source)
    return True


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


_PUBLIC_NOTES = {
    "ngrok": ("anyone who has this URL can use the model (protect it with extra_args=['--api-key', KEY] or "
              "['--auth', 'USER:PASSWORD']). ngrok's free plan shows a browser warning page once ('Visit Site'); API "
              "clients skip it with the header 'ngrok-skip-browser-warning: 1'. It lives as long as this runtime: "
              "for short demos, not for hosting."),
    "cloudflared": ("a TryCloudflare quick tunnel: no account, and no uptime promise (it may stop or be slow; "
                    "Cloudflare's terms for account-less tunnels apply). Anyone who has the link can use the model "
                    "(protect it with extra_args=['--api-key', KEY] or ['--auth', 'USER:PASSWORD']). It lives as long "
                    "as this runtime: for short demos, not for hosting. An ngrok authtoken gives an ngrok URL instead."),
}


def show_server(server, height: int = 720) -> str:
    """Says where the server can be reached, and shows its web page in the notebook when there is no public URL.

    * a public URL (ngrok with a token, else a no-account cloudflared quick tunnel): printed once,
      with what comes with it;
    * Colab without one: the page in an iframe of the cell's output (Colab's port proxy: for the
      notebook's user only, and only inside the notebook, so no address is printed);
    * elsewhere: the local address, which works on this machine.

    Returns:
        The URL to use from this kernel: public, or local.
    """
    if server.public_url:
        via = server.info.get("public_via") or server.info.get("tunnel") or "ngrok"
        print(f"Public URL: {server.public_url}\nWARNING: " + _PUBLIC_NOTES.get(via, _PUBLIC_NOTES["ngrok"]))
        return server.public_url
    why = f" ({server.tunnel_error})" if server.tunnel_error else ""
    if not in_colab():
        print(f"Open {server.url} (on this machine only; no public URL{why})")
        return server.url
    from google.colab.output import serve_kernel_port_as_iframe  # only exists in Colab

    serve_kernel_port_as_iframe(server.port, height=str(height))
    print(f"No public URL{why}. The web page is shown above, inside the notebook (Colab's proxy): for you only, "
          "while this notebook is open; its address does not work in another tab.")
    return server.url


def keep_or_stop(server, stop: bool) -> None:
    """The notebooks' last cell: stops the server when ``stop``, else says that it keeps running, and where."""
    if stop:
        print("exit code", server.stop())
        return
    if server.public_url:
        where = "at the public URL printed above"
    elif in_colab():
        where = "in the page shown above (inside this notebook)"
    else:
        where = f"at {server.url} (on this machine)"
    print(f"The server keeps running {where} - tick STOP_SERVER and run this cell to stop it.")

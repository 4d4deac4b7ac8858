"""Serve a trained model folder: the REST API, the web page and, on request, a public URL.

Usage:
    python rest_api_flask/flask_app.py --model-dir outputs/demo/model --upload-folder uploads \\
        --output-folder served [--use-ngrok | --tunnel cloudflared|colab|auto] [--auth user:password]
        [--device auto|cpu|cuda|cuda:N | --infer-with-cpu]
    python -m rest_api_flask ...                      # the same

It prints ``Serving on http://HOST:PORT`` once it accepts connections, and with a tunnel
``Public URL: https://...``. Programs read ``--ready-file PATH`` instead: a JSON file with the URL,
the public URL and the tunnel's state (:mod:`rest_api_flask.ready`). Stop it with Ctrl+C (tunnels
close on exit).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path

if __package__ in (None, ""):
    # run as a file: import the package, not this folder's modules as top-level names
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from maskrcnn_finetune.cli import run_cli  # noqa: E402
from maskrcnn_finetune.coco_model import COCO_MODEL, coco_model_dir  # noqa: E402
from maskrcnn_finetune.errors import ConfigError  # noqa: E402
from maskrcnn_finetune.model_spec import DEFAULT_SCORE_THRESHOLD  # noqa: E402
from rest_api_flask import config  # noqa: E402
from rest_api_flask.config import ServeConfig, bare_weights, check_config  # noqa: E402

logger = logging.getLogger("rest_api_flask")


def build_parser() -> argparse.ArgumentParser:
    """The server's flags, one per :class:`~rest_api_flask.config.ServeConfig` field."""
    return config.build_parser(description=__doc__.split("\n\n")[0], epilog=__doc__)


def check_port_free(host: str, port: int) -> None:
    """Fails before the (slow) model load when the address cannot be listened on."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
            probe.bind(infos[0][4])
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pass another --port "
                          "(0 picks a free one) or stop the program that uses it") from exc


def served_model_dir(cfg: ServeConfig) -> Path:
    """The model folder the server loads: ``--model-dir``, torchvision's COCO model for ``coco``, or the folder
    a bare detectron2 checkpoint is imported into (a URL is downloaded once into the output folder first)."""
    weights = bare_weights(cfg)
    if weights is not None:
        from maskrcnn_finetune.data.download import fetch_file

        return model_folder_of_weights(cfg, fetch_file(weights, Path(cfg.output_folder) / "models" / "downloads",
                                                        ".pth"))
    if cfg.model_dir == COCO_MODEL and not Path(cfg.model_dir).exists():
        model_dir = coco_model_dir(Path(cfg.output_folder) / "models")
        say(f"Serving torchvision's COCO Mask R-CNN (80 classes, no training of yours): {model_dir}")
        return model_dir
    return Path(cfg.model_dir)


def model_folder_of_weights(cfg: ServeConfig, weights: Path) -> Path:
    """The model folder of a bare detectron2 checkpoint, made once inside --output-folder.

    The folder is named after the checkpoint's content, so the same file is imported once and
    another file never reuses a stale folder. Without --classes, the classes are named class_1,
    class_2, ... (as many as the config file's MODEL.ROI_HEADS.NUM_CLASSES).
    """
    from maskrcnn_finetune.data.download import sha256_of
    from maskrcnn_finetune.model_dir import MODEL_JSON
    from maskrcnn_finetune.modeling.detectron2 import require_detectron2

    require_detectron2()
    from maskrcnn_finetune.modeling.detectron2.importing import import_checkpoint

    weights = Path(weights)
    folder = Path(cfg.output_folder) / "models" / f"{weights.stem}-{sha256_of(weights)[:12]}"
    if not (folder / MODEL_JSON).exists():
        if cfg.classes:
            classes = [name.strip() for name in cfg.classes.split(",")]
        else:
            from maskrcnn_finetune.modeling.detectron2.model_config import load_config

            count = int(load_config(cfg.d2_config).MODEL.ROI_HEADS.NUM_CLASSES)
            classes = [f"class_{k}" for k in range(1, count + 1)]
            say(f"no --classes: its {count} classes are named {', '.join(classes)}; --classes NAMES names them")
        threshold = DEFAULT_SCORE_THRESHOLD if cfg.threshold is None else cfg.threshold
        import_checkpoint(weights, cfg.d2_config, classes, folder, score_threshold=threshold,
                          trusted=cfg.trust_checkpoint)
        say(f"imported {weights} into the model folder {folder}")
    return folder


def say(text: str) -> None:
    """Prints a line for the user (and for notebooks that parse it), flushed at once."""
    print(text, flush=True)


def _start_tunnel(kind: str, port: int, token: str | None, auth: str | None, opened: list, ready) -> None:
    from maskrcnn_finetune.errors import TunnelError
    from rest_api_flask.tunnel import NO_ACCOUNT_NOTE, open_tunnel

    try:
        tunnel = open_tunnel(kind, port, token, auth)
    except TunnelError as exc:
        say(f"WARNING: no public URL: {exc}; the server keeps serving locally.")
        if ready:
            ready.write(tunnel_state="failed", tunnel_error=str(exc))
        return
    opened.append(tunnel)
    line = "=" * max(40, len(tunnel.public_url) + 12)
    say(f"{line}\nPublic URL: {tunnel.public_url}\n{line}")
    if tunnel.kind == "cloudflared":
        say(f"It is {NO_ACCOUNT_NOTE}.")
    if ready:
        ready.write(tunnel_state="open", public_url=tunnel.public_url, public_via=tunnel.kind)


def _make_server(app, cfg: ServeConfig):
    """A bound, listening server: ``(port, serve_forever, close)``; waitress unless ``--debug``."""
    if cfg.debug:
        from werkzeug.serving import make_server

        app.debug = True
        server = make_server(cfg.host, cfg.port, app, threaded=True)  # never the reloader: it loads the model twice
        return server.server_port, server.serve_forever, server.server_close
    from rest_api_flask.wsgi_server import create_server

    # waitress's cap is the app's: every refusal is the app's JSON 413, whatever the client (wsgi_server)
    sock = socket.socket(fileno=cfg.worker_fd) if cfg.worker_fd is not None else None
    return create_server(app, cfg.host, cfg.port, cfg.threads, app.config["MAX_CONTENT_LENGTH"], sock=sock)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = ServeConfig.from_args(build_parser().parse_args(argv))
    check_config(cfg)
    if cfg.worker_fd is not None:
        return _serve_worker(cfg)
    token = None
    if cfg.tunnel in ("ngrok", "auto"):
        from rest_api_flask.tunnel import resolve_authtoken

        # no token: the tunnel thread says how to get one (ERR_NGROK_4018's advice), the server serves locally
        token = resolve_authtoken(cfg.ngrok_authtoken)
        if cfg.tunnel == "auto" and token and cfg.auth and not 8 <= len(cfg.auth.partition(":")[2]) <= 128:
            raise ConfigError("ngrok's basic auth needs a password of 8 to 128 characters; "
                              "choose a longer one in --auth USER:PASSWORD")

    from rest_api_flask.ready import ReadyFile, connectable_url, read_ready

    if cfg.workers > 1:
        from rest_api_flask.workers import WorkerPool, listening_socket

        sock = listening_socket(cfg.host, cfg.port)  # before the (slow) model loads, as check_port_free
        pool = WorkerPool(argv, cfg.workers, sock, served_model_dir(cfg))
        pids = pool.wait_ready(cfg.worker_start_timeout)
        port, serve, shutdown = sock.getsockname()[1], pool.serve, pool.stop
        first = read_ready(pool.ready_paths[0])
        device, mode = first["device"], first["model"]
        say(f"{cfg.workers} workers ({', '.join(map(str, pids))}), each with the model on {device}: {mode}")
        extra = {"workers": pids}
    else:
        check_port_free(cfg.host, cfg.port)
        app = _create_app(cfg, served_model_dir(cfg))
        predictor = app.extensions["inference"].predictor
        device, mode = str(predictor.device), predictor.describe_mode()
        say(f"Model on {device}: {mode}" + (" (--no-fast turns it off)" if predictor.fast else ""))
        port, serve, shutdown = _listen(app, cfg)
        extra = {}
    # the socket is bound and listening: connections from here on are queued and answered
    say(f"Serving on http://{cfg.host}:{port}")
    ready = ReadyFile(cfg.ready_file) if cfg.ready_file else None
    if ready:
        ready.write(url=connectable_url(cfg.host, port), port=int(port), pid=os.getpid(), device=device,
                    model=mode, tunnel=cfg.tunnel, tunnel_state="none" if cfg.tunnel == "none" else "opening",
                    public_url=None, tunnel_error=None, **extra)
    if cfg.tunnel not in ("none", "colab") and not (cfg.auth or cfg.api_key):  # Colab's proxy: its user's only
        say("WARNING: the public URL is open to anyone who has it; protect it with --auth USER:PASSWORD or --api-key KEY")
    opened: list = []
    if cfg.tunnel != "none":
        threading.Thread(target=_start_tunnel, args=(cfg.tunnel, port, token, cfg.auth, opened, ready), daemon=True).start()
    return _serve_until_stopped(serve, shutdown, ready, opened)


def _create_app(cfg: ServeConfig, model_dir, **settings):
    from rest_api_flask import create_app

    return create_app({**cfg.app_config(), "MODEL_DIR": str(model_dir), **settings})


def _listen(app, cfg: ServeConfig):
    try:
        return _make_server(app, cfg)
    except OSError as exc:  # the address is taken or not this machine's
        raise ConfigError(f"cannot listen on {cfg.host}:{cfg.port} ({exc.strerror or exc}); pass another --port "
                          "(0 picks a free one) or stop the program that uses it") from exc


def _serve_worker(cfg: ServeConfig) -> int:
    """One of --workers' processes: the model folder its parent resolved, the socket it inherited, no tunnel."""
    from rest_api_flask.ready import ReadyFile

    app = _create_app(cfg, cfg.worker_model_dir, WORKER_HEADER=True)
    port, serve, shutdown = _listen(app, cfg)
    predictor = app.extensions["inference"].predictor
    say(f"worker {os.getpid()} serving on port {port}")
    ready = ReadyFile(cfg.ready_file) if cfg.ready_file else None
    if ready:
        ready.write(port=int(port), pid=os.getpid(), device=str(predictor.device), model=predictor.describe_mode())
    return _serve_until_stopped(serve, shutdown, ready, [])


def _serve_until_stopped(serve, shutdown, ready, opened: list) -> int:
    def _terminate(signum, frame):  # SIGTERM: leave through the finally below, so tunnels close
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    try:
        serve()
    except KeyboardInterrupt:
        say("Stopping the server")
    finally:
        if ready:
            ready.remove()
        for tunnel in opened:
            tunnel.close()
        try:
            shutdown()
        except Exception:  # noqa: BLE001 - already stopping
            pass
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))

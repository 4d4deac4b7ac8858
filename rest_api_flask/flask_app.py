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

from maskrcnn_finetune.cli import add_device_argument, add_runtime_arguments, run_cli  # noqa: E402
from maskrcnn_finetune.coco_model import COCO_MODEL, coco_model_dir  # noqa: E402
from maskrcnn_finetune.errors import ConfigError  # noqa: E402

logger = logging.getLogger("rest_api_flask")


class _OneLineParser(argparse.ArgumentParser):
    """Reports a bad flag in one line (argparse prints the whole usage first), still with exit status 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message}; run with --help to see every option\n")


def _port_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"the port must be a number, got {text!r} (from --port or the PORT "
                                         "environment variable)") from None


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model-dir", default=None,
                        help="a model folder written by scripts/train.py, a bare detectron2 model_final.pth "
                             "(with --d2-config and --classes), or 'coco': torchvision's COCO-trained Mask R-CNN "
                             "(80 classes, no training; downloaded once)")
    parser.add_argument("--weights", default=None, metavar="FILE_OR_URL",
                        help="a detectron2 checkpoint (model_final.pth) to serve, a file or an http(s) URL (downloaded "
                             "once into the output folder), with --config-file; the older REST API kit's flag")
    parser.add_argument("--d2-config", "--config-file", dest="d2_config", default=None,
                        help="with a bare detectron2 .pth: its config yaml, or the model-zoo config name it was trained from")
    parser.add_argument("--classes", default=None,
                        help="with a bare detectron2 .pth: class names in category order, comma-separated "
                             "(default: class_1, class_2, ... as many as its config file says)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="with a bare detectron2 .pth holding Python objects besides weights (only files you trust)")
    parser.add_argument("--upload-folder", default="uploads",
                        help="received images are kept here; the legacy routes read images from here")
    parser.add_argument("--output-folder", default="outputs/served", help="result files are written here")
    parser.add_argument("--use-ngrok", action="store_true", help="the same as --tunnel ngrok")
    from rest_api_flask.tunnel import TUNNELS

    parser.add_argument("--tunnel", choices=TUNNELS, default="none",
                        help="a public URL: an ngrok tunnel (an account's authtoken), a cloudflared quick tunnel "
                             "(TryCloudflare: no account, no uptime promise), Colab's own proxy, or auto: ngrok when "
                             "an authtoken is set, else cloudflared (default: none)")
    parser.add_argument("--ngrok-authtoken", default=None,
                        help="ngrok authtoken (default: env NGROK_AUTHTOKEN or the Colab secret NGROK_AUTHTOKEN)")
    add_device_argument(parser)
    parser.add_argument("--infer-with-cpu", action="store_true",
                        help="the same as --device cpu: the model on the CPU even with a GPU")
    parser.add_argument("--no-fast", action="store_true",
                        help="run the plain fp32 model on the CPU, without the fast path (bf16 where the CPU "
                             "has it, channels-last, threshold before the mask head)")
    add_runtime_arguments(parser)
    parser.add_argument("--threshold", type=float, default=0.5, help="default score threshold of a request")
    parser.add_argument("--remove-colors", action="store_true",
                        help="draw overlays on a grey copy of the image, the masks in colour (the web page starts "
                             "with its 'Grey image' box ticked; a request's remove_colors=0/1 overrides it)")
    parser.add_argument("--host", default=os.environ.get("HOST") or "127.0.0.1",
                        help="address to listen on (0.0.0.0: every interface; default: env HOST, else 127.0.0.1)")
    parser.add_argument("--port", type=_port_number, default=os.environ.get("PORT") or "5000",
                        help="port to listen on (0: any free port; default: env PORT, else 5000)")
    parser.add_argument("--debug", action="store_true", help="Flask's development server with debug pages")
    parser.add_argument("--auth", default=None, metavar="USER:PASSWORD",
                        help="require HTTP basic auth (also set on the ngrok tunnel)")
    parser.add_argument("--api-key", default=None, help="accept this key in the X-API-Key header")
    parser.add_argument("--cors-origin", action="append", default=None, metavar="ORIGIN",
                        help="let a browser app on this origin (e.g. https://app.example.com; '*' for any) call the "
                             "API; repeat for several (default: none, same-origin only)")
    parser.add_argument("--max-upload-mb", type=float, default=20, help="largest request body (413 above)")
    parser.add_argument("--max-pixels", type=int, default=40_000_000, help="largest image, width x height")
    parser.add_argument("--retention-minutes", type=float, default=60,
                        help="results older than this are deleted (0: keep)")
    parser.add_argument("--threads", type=int, default=8, help="waitress worker threads")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS") or 1),
                        help="server processes, each with its own model, on one port (default: env WORKERS, else 1); "
                             "each gets cores/N torch threads; results are shared through --output-folder")
    parser.add_argument("--micro-batch", type=int, default=1, metavar="N",
                        help="run requests that wait for the model together (same threshold, images of one size) "
                             "in one model call of up to N images: throughput on a GPU; answers equal one-by-one "
                             "ones to float rounding (default 1: one by one; on a CPU batching paid nothing)")
    parser.add_argument("--micro-batch-wait-ms", type=float, default=5.0, metavar="MS",
                        help="with --micro-batch: how long a request may wait for others to join its call (default 5)")
    parser.add_argument("--worker-start-timeout", type=float, default=600, metavar="SECONDS",
                        help="with --workers: seconds the processes have to load the model and serve; past it they "
                             "are stopped and the server exits saying so (default 600)")
    # set by --workers for the processes it starts (rest_api_flask/workers.py), not by users
    parser.add_argument("--worker-fd", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-model-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ready-file", default=None, metavar="PATH",
                        help="write a JSON file here once serving (url, public_url, tunnel_state, ...) and update "
                             "it when the tunnel opens or fails; removed on exit (for programs that start the server)")
    legacy = parser.add_argument_group("the older kits' routes (/api/detect-area-*, /detect)")
    legacy.add_argument("--max-batch", type=int, default=16,
                        help="images in one /api/v1/predict/batch request (413 above); the legacy folder routes "
                             "answer any number, taking the model for this many at a time")
    legacy.add_argument("--legacy-base64-folder", default=None, metavar="DIR",
                        help="also write the old API's base64 .txt copies of its images here (OUTPUT_BASE_<name>.txt, "
                             "OUTPUT_PARTIAL_IMAGE_BASE_<name>_<i>.txt), e.g. output/string_images")
    legacy.add_argument("--legacy-output-scale", type=float, default=1.0,
                        help="size of the old API's drawn output images (0.7: the size it drew them at)")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Refuses values the server cannot use, naming the fix (a ConfigError exits with status 2)."""
    if args.infer_with_cpu and args.device not in ("auto", "cpu"):
        raise ConfigError(f"--infer-with-cpu is --device cpu, and --device {args.device} was given too; keep one")
    if not 0.0 <= args.threshold <= 1.0:
        raise ConfigError(f"--threshold must be between 0 and 1, got {args.threshold}")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {args.port}")
    if args.auth is not None:
        user, sep, password = args.auth.partition(":")
        if not (user and sep and password):
            raise ConfigError("--auth must be USER:PASSWORD with both parts non-empty, e.g. --auth demo:s3cret")
    for name in ("max_upload_mb", "max_pixels", "threads", "workers", "worker_start_timeout", "micro_batch"):
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.micro_batch_wait_ms < 0:
        raise ConfigError(f"--micro-batch-wait-ms must be 0 or more, got {args.micro_batch_wait_ms}")
    if args.max_batch <= 0:
        raise ConfigError(f"--max-batch must be positive, got {args.max_batch}")
    if not 0.0 < args.legacy_output_scale <= 1.0:
        raise ConfigError(f"--legacy-output-scale must be above 0 and at most 1 (0.7: the old API's size), "
                          f"got {args.legacy_output_scale}")
    if args.retention_minutes < 0:
        raise ConfigError("--retention-minutes must be 0 (keep results) or positive")
    if args.model_dir is None and args.weights is None:
        raise ConfigError("no model given: pass --model-dir with a model folder (a training's --output-dir), "
                          "--weights FILE_OR_URL --config-file CONFIG.yaml for a detectron2 checkpoint, or "
                          "--model-dir coco to try torchvision's COCO-trained model")
    if args.model_dir is not None and args.weights is not None:
        raise ConfigError("give --model-dir or --weights, not both")
    weights = bare_weights(args)
    if weights is not None:
        if not args.d2_config:
            raise ConfigError(f"'{weights}' is a bare detectron2 checkpoint: pass its --config-file CONFIG.yaml (or the "
                              "model-zoo config name it was trained from, then with --classes NAMES), or import it "
                              f"once with python scripts/import_detectron2.py --weights {weights} --config CONFIG.yaml "
                              "--classes NAMES --output-dir DIR")
        if not args.classes and not Path(args.d2_config).is_file():
            raise ConfigError(f"--config-file '{args.d2_config}' is not a file, so the number of classes is unknown: "
                              "pass --classes NAMES in the order of the training set's categories")
        return
    if not Path(args.model_dir).exists() and args.model_dir != COCO_MODEL:
        raise ConfigError(f"model folder '{args.model_dir}' does not exist; pass --model-dir with the "
                          "--output-dir of a training run (it holds model.json and model_final.pth)")


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


def bare_weights(args: argparse.Namespace) -> str | None:
    """The detectron2 checkpoint to serve (``--weights``, or a file given as ``--model-dir``), or None."""
    if args.weights is not None:
        return args.weights
    return args.model_dir if Path(args.model_dir).is_file() else None


def served_model_dir(args: argparse.Namespace) -> Path:
    """The model folder the server loads: ``--model-dir``, torchvision's COCO model for ``coco``, or the folder
    a bare detectron2 checkpoint is imported into (a URL is downloaded once into the output folder first)."""
    weights = bare_weights(args)
    if weights is not None:
        from maskrcnn_finetune.data.download import fetch_file

        return model_folder_of_weights(args, fetch_file(weights, Path(args.output_folder) / "models" / "downloads",
                                                        ".pth"))
    if args.model_dir == COCO_MODEL and not Path(args.model_dir).exists():
        model_dir = coco_model_dir(Path(args.output_folder) / "models")
        say(f"Serving torchvision's COCO Mask R-CNN (80 classes, no training of yours): {model_dir}")
        return model_dir
    return Path(args.model_dir)


def model_folder_of_weights(args: argparse.Namespace, weights: Path) -> Path:
    """The model folder of a bare detectron2 checkpoint, made once inside --output-folder.

    The folder is named after the checkpoint's content, so the same file is imported once and
    another file never reuses a stale folder. Without --classes, the classes are named class_1,
    class_2, ... (as many as the config file's MODEL.ROI_HEADS.NUM_CLASSES).
    """
    from maskrcnn_finetune.data.download import sha256_of
    from maskrcnn_finetune.model_dir import MODEL_JSON
    from maskrcnn_finetune.modeling.detectron2 import require_detectron2

    require_detectron2()
    from maskrcnn_finetune.modeling.detectron2.checkpoints import import_checkpoint

    weights = Path(weights)
    folder = Path(args.output_folder) / "models" / f"{weights.stem}-{sha256_of(weights)[:12]}"
    if not (folder / MODEL_JSON).exists():
        if args.classes:
            classes = [name.strip() for name in args.classes.split(",")]
        else:
            from maskrcnn_finetune.modeling.detectron2.model_config import load_config

            count = int(load_config(args.d2_config).MODEL.ROI_HEADS.NUM_CLASSES)
            classes = [f"class_{k}" for k in range(1, count + 1)]
            say(f"no --classes: its {count} classes are named {', '.join(classes)}; --classes NAMES names them")
        import_checkpoint(weights, args.d2_config, classes, folder, score_threshold=args.threshold,
                          trusted=args.trust_checkpoint)
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


def _make_server(app, args: argparse.Namespace):
    """A bound, listening server: ``(port, serve_forever, close)``; waitress unless ``--debug``."""
    if args.debug:
        from werkzeug.serving import make_server

        app.debug = True
        server = make_server(args.host, args.port, app, threaded=True)  # never the reloader: it loads the model twice
        return server.server_port, server.serve_forever, server.server_close
    from rest_api_flask.wsgi_server import create_server

    # waitress's cap is the app's: every refusal is the app's JSON 413, whatever the client (wsgi_server)
    sock = socket.socket(fileno=args.worker_fd) if args.worker_fd is not None else None
    return create_server(app, args.host, args.port, args.threads, app.config["MAX_CONTENT_LENGTH"], sock=sock)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    check_args(args)
    if args.worker_fd is not None:
        return _serve_worker(args)
    tunnel_kind = "ngrok" if args.use_ngrok else args.tunnel
    token = None
    if tunnel_kind in ("ngrok", "auto"):
        from rest_api_flask.tunnel import resolve_authtoken

        # no token: the tunnel thread says how to get one (ERR_NGROK_4018's advice), the server serves locally
        token = resolve_authtoken(args.ngrok_authtoken)
        if args.auth and (tunnel_kind == "ngrok" or token) and not 8 <= len(args.auth.partition(":")[2]) <= 128:
            raise ConfigError("ngrok's basic auth needs a password of 8 to 128 characters; "
                              "choose a longer one in --auth USER:PASSWORD")

    from rest_api_flask.ready import ReadyFile, connectable_url, read_ready

    if args.workers > 1:
        from rest_api_flask.workers import WorkerPool, listening_socket

        sock = listening_socket(args.host, args.port)  # before the (slow) model loads, as check_port_free
        pool = WorkerPool(argv, args.workers, sock, served_model_dir(args))
        pids = pool.wait_ready(args.worker_start_timeout)
        port, serve, shutdown = sock.getsockname()[1], pool.serve, pool.stop
        first = read_ready(pool.ready_paths[0])
        device, mode = first["device"], first["model"]
        say(f"{args.workers} workers ({', '.join(map(str, pids))}), each with the model on {device}: {mode}")
        extra = {"workers": pids}
    else:
        check_port_free(args.host, args.port)
        app = _create_app(args, served_model_dir(args))
        predictor = app.extensions["inference"].predictor
        device, mode = str(predictor.device), predictor.describe_mode()
        say(f"Model on {device}: {mode}" + (" (--no-fast turns it off)" if predictor.fast else ""))
        port, serve, shutdown = _listen(app, args)
        extra = {}
    # the socket is bound and listening: connections from here on are queued and answered
    say(f"Serving on http://{args.host}:{port}")
    ready = ReadyFile(args.ready_file) if args.ready_file else None
    if ready:
        ready.write(url=connectable_url(args.host, port), port=int(port), pid=os.getpid(), device=device,
                    model=mode, tunnel=tunnel_kind, tunnel_state="none" if tunnel_kind == "none" else "opening",
                    public_url=None, tunnel_error=None, **extra)
    if tunnel_kind not in ("none", "colab") and not (args.auth or args.api_key):  # Colab's proxy: its user's only
        say("WARNING: the public URL is open to anyone who has it; protect it with --auth USER:PASSWORD or --api-key KEY")
    opened: list = []
    if tunnel_kind != "none":
        threading.Thread(target=_start_tunnel, args=(tunnel_kind, port, token, args.auth, opened, ready), daemon=True).start()
    return _serve_until_stopped(serve, shutdown, ready, opened)


def _create_app(args: argparse.Namespace, model_dir, **settings):
    from rest_api_flask import create_app
    from rest_api_flask.config import config_from_args

    return create_app({**config_from_args(args), "MODEL_DIR": str(model_dir), **settings})


def _listen(app, args: argparse.Namespace):
    try:
        return _make_server(app, args)
    except OSError as exc:  # the address is taken or not this machine's
        raise ConfigError(f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc}); pass another --port "
                          "(0 picks a free one) or stop the program that uses it") from exc


def _serve_worker(args: argparse.Namespace) -> int:
    """One of --workers' processes: the model folder its parent resolved, the socket it inherited, no tunnel."""
    from rest_api_flask.ready import ReadyFile

    app = _create_app(args, args.worker_model_dir, WORKER_HEADER=True)
    port, serve, shutdown = _listen(app, args)
    predictor = app.extensions["inference"].predictor
    say(f"worker {os.getpid()} serving on port {port}")
    ready = ReadyFile(args.ready_file) if args.ready_file else None
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

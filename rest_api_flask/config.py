"""The server's options in one place: :class:`ServeConfig`.

Each field is one option of ``flask_app.py`` and carries, in its metadata, everything about it:
its flag (and other spellings), help text, allowed values, check, and the key of the app's config
(``app.config``) it fills. From the fields come the server's flags (:func:`build_parser`), their
checks (:func:`check_config`, every problem at once), the app's config (:meth:`ServeConfig.app_config`,
and :data:`DEFAULTS`, what ``create_app(test_config)`` starts from) and the launcher's command line
(:func:`to_argv`). Adding a server option is adding a field.

    cfg = ServeConfig.from_argv(["--model-dir", "outputs/demo/model", "--threshold", "0.3"])
    check_config(cfg)
    app = create_app({**cfg.app_config(), "MODEL_DIR": "outputs/demo/model"})
"""

from __future__ import annotations

import argparse
import copy
import os
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path

from maskrcnn_finetune.cli import RUNTIME_CHOICES, add_device_argument, add_runtime_arguments, add_with_aliases
from maskrcnn_finetune.coco_model import COCO_MODEL
from maskrcnn_finetune.devices import DEFAULT_RUNTIME, RUNTIME_ENV, check_device
from maskrcnn_finetune.errors import ConfigError
from rest_api_flask.tunnel import TUNNELS

LEGACY = "the older kits' routes (/api/detect-area-*, /detect)"
"""The ``--help`` section of the options of the older kits' routes."""

_POSITIVE = (lambda value: value > 0, "{flag} must be positive, got {value}")


def _option(default, help: str | None = None, *, key: str | None = None, flags: tuple[str, ...] = (),
            aliases: tuple[str, ...] = (), switches: dict | None = None, choices: tuple | None = None,
            check: tuple | None = None, type=None, env: str | None = None, metavar: str | None = None,
            const=MISSING, group: str | None = None, hidden: bool = False):
    """A :class:`ServeConfig` field and what the server does with it.

    Args:
        default: the value when the flag is not given.
        help: its ``--help`` text.
        key: the ``app.config`` key it fills (None: only the server program reads it, e.g. ``--port``).
        flags: its command-line spellings, all shown in ``--help`` (default: ``--field-name``); the first
            is the one :func:`to_argv` writes.
        aliases: older spellings that still work, left out of ``--help`` (giving two at once is an error);
            for an option with one flag.
        switches: ``{flag: (value, help)}``: short forms that set this option to ``value``
            (``--infer-with-cpu`` is ``--device cpu``); giving one with another value of the option is an error.
        choices: the allowed values.
        check: ``(predicate, message)``: values for which ``predicate`` is false are refused with ``message``
            (``{flag}`` and ``{value}`` are filled in).
        type: what the flag's text is turned into (default: the type of ``default``, else ``str``).
        env: the environment variable whose value replaces ``default`` on the command line.
        metavar: the value's name in ``--help``.
        const: the flag takes no value and sets the option to ``const`` (a ``False`` default: ``True``).
        group: the ``--help`` section it is listed in.
        hidden: left out of ``--help`` (set by the server for its own processes).
    """
    metadata = {k: v for k, v in (("help", help), ("key", key), ("flags", flags), ("aliases", aliases),
                                  ("switches", switches), ("choices", choices), ("check", check), ("type", type),
                                  ("env", env), ("metavar", metavar), ("group", group)) if v}
    if const is not MISSING:
        metadata["const"] = const
    if hidden:
        metadata["hidden"] = True
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _port_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"the port must be a number, got {text!r} (from --port or the PORT "
                                         "environment variable)") from None


def _auth_form(value) -> bool:
    """Whether ``--auth`` is unset or ``USER:PASSWORD`` with both parts non-empty."""
    if value is None:
        return True
    user, sep, password = str(value).partition(":")
    return bool(user and sep and password)


@dataclass
class ServeConfig:
    """Every option of the server (``flask_app.py``, ``python -m rest_api_flask``).

    The fields' metadata (see :func:`_option`) give the flags, the checks and the app config keys.
    ``threshold`` None means the model folder's (``model.json``'s ``score_threshold``).
    """

    # the model
    model_dir: str | None = _option(
        None, "a model folder written by scripts/train.py (or the folder of scripts/export.py's model.pt2), a bare "
        "detectron2 model_final.pth (with --d2-config and --classes), or 'coco': torchvision's COCO-trained Mask "
        "R-CNN (80 classes, no training; downloaded once)",
        key="MODEL_DIR")
    weights: str | None = _option(
        None, "a detectron2 checkpoint (model_final.pth) to serve, a file or an http(s) URL (downloaded once into the "
        "output folder), with --config-file; the older REST API kit's flag", metavar="FILE_OR_URL")
    d2_config: str | None = _option(
        None, "with a bare detectron2 .pth: its config yaml, or the model-zoo config name it was trained from",
        flags=("--d2-config", "--config-file"))
    classes: str | None = _option(
        None, "with a bare detectron2 .pth: class names in category order, comma-separated (default: class_1, "
        "class_2, ... as many as its config file says)")
    trust_checkpoint: bool = _option(
        False, "with a bare detectron2 .pth holding Python objects besides weights (only files you trust)")
    # folders
    upload_folder: str = _option("uploads", "received images are kept here; the legacy routes read images from here",
                                 key="UPLOAD_FOLDER")
    output_folder: str = _option("outputs/served", "result files are written here",
                                 key="OUTPUT_FOLDER")
    # a public URL
    tunnel: str = _option("none", "a public URL: an ngrok tunnel (an account's authtoken), a cloudflared quick tunnel "
                          "(TryCloudflare: no account, no uptime promise), Colab's own proxy, or auto: ngrok when an "
                          "authtoken is set, else cloudflared (default: none)",
                          choices=TUNNELS,
                          switches={"--use-ngrok": ("ngrok", "the same as --tunnel ngrok")})
    ngrok_authtoken: str | None = _option(
        None, "ngrok authtoken (default: env NGROK_AUTHTOKEN or the Colab secret NGROK_AUTHTOKEN)")
    # how the model runs
    device: str = _option("auto", key="DEVICE", switches={
        "--infer-with-cpu": ("cpu", "the same as --device cpu: the model on the CPU even with a GPU")})
    fast: bool | None = _option(
        None, "run the plain fp32 model on the CPU, without the fast path (bf16 where the CPU has it, channels-last, "
        "threshold before the mask head)", key="FAST", flags=("--no-fast",), const=False)
    runtime: str = _option(DEFAULT_RUNTIME, key="RUNTIME", choices=RUNTIME_CHOICES,
                           env=RUNTIME_ENV)  # flag and help: cli.add_runtime_arguments
    calibration_images: str | None = _option(None, key="CALIBRATION_IMAGES")  # added with --runtime
    val_json: str | None = _option(None, key="VAL_JSON")  # added with --runtime
    # what a request gets by default
    threshold: float | None = _option(
        None, "default score threshold of a request (default: the model folder's, model.json's score_threshold)",
        key="THRESHOLD", type=float,
        check=(lambda value: value is None or 0.0 <= value <= 1.0, "{flag} must be between 0 and 1, got {value}"))
    remove_colors: bool = _option(
        False, "draw overlays on a grey copy of the image, the masks in colour (the web page starts with its 'Grey "
        "image' box ticked; a request's remove_colors=0/1 overrides it)", key="REMOVE_COLORS")
    # where and how it listens
    host: str = _option("127.0.0.1", "address to listen on (0.0.0.0: every interface; default: env HOST, else "
                        "127.0.0.1)", env="HOST")
    port: int = _option(5000, "port to listen on (0: any free port; default: env PORT, else 5000)", env="PORT",
                        type=_port_number,
                        check=(lambda value: 0 <= value <= 65535, "{flag} must be between 0 and 65535, got {value}"))
    debug: bool = _option(False, "Flask's development server with debug pages")
    auth: str | None = _option(
        None, "require HTTP basic auth (also set on the ngrok tunnel)", key="AUTH", metavar="USER:PASSWORD",
        check=(_auth_form, "{flag} must be USER:PASSWORD with both parts non-empty, e.g. --auth demo:s3cret"))
    api_key: str | None = _option(None, "accept this key in the X-API-Key header", key="API_KEY")
    cors_origins: list[str] = _option(
        [], "let a browser app on this origin (e.g. https://app.example.com; '*' for any) call the API; repeat for "
        "several (default: none, same-origin only)", key="CORS_ORIGINS", flags=("--cors-origin",), metavar="ORIGIN")
    max_upload_mb: float = _option(20.0, "largest request body (413 above)", key="MAX_UPLOAD_MB", check=_POSITIVE)
    max_pixels: int = _option(40_000_000, "largest image, width x height", key="MAX_PIXELS", check=_POSITIVE)
    retention_minutes: float = _option(
        60.0, "results older than this are deleted (0: keep)", key="RETENTION_MINUTES",
        check=(lambda value: value >= 0, "{flag} must be 0 (keep results) or positive, got {value}"))
    threads: int = _option(8, "waitress worker threads", check=_POSITIVE)
    workers: int = _option(
        1, "server processes, each with its own model, on one port (default: env WORKERS, else 1); each gets cores/N "
        "torch threads; results are shared through --output-folder", env="WORKERS", check=_POSITIVE)
    micro_batch: int = _option(
        1, "run requests that wait for the model together (same threshold, images of one size) in one model call of "
        "up to N images: throughput on a GPU; answers equal one-by-one ones to float rounding (default 1: one by "
        "one; on a CPU batching paid nothing)", key="MICRO_BATCH", metavar="N", check=_POSITIVE)
    micro_batch_wait_ms: float = _option(
        5.0, "with --micro-batch: how long a request may wait for others to join its call",
        key="MICRO_BATCH_WAIT_MS", metavar="MS",
        check=(lambda value: value >= 0, "{flag} must be 0 or more, got {value}"))
    worker_start_timeout: float = _option(
        600.0, "with --workers: seconds the processes have to load the model and serve; past it they are stopped and "
        "the server exits saying so", metavar="SECONDS", check=_POSITIVE)
    # set by --workers for the processes it starts (rest_api_flask/workers.py), not by users
    worker_fd: int | None = _option(None, type=int, hidden=True)
    worker_model_dir: str | None = _option(None, hidden=True)
    ready_file: str | None = _option(
        None, "write a JSON file here once serving (url, public_url, tunnel_state, ...) and update it when the tunnel "
        "opens or fails; removed on exit (for programs that start the server)", metavar="PATH")
    # the older kits' routes
    max_batch: int = _option(
        16, "images in one /api/v1/predict/batch request (413 above); the legacy folder routes answer any number, "
        "taking the model for this many at a time", key="MAX_BATCH", group=LEGACY, check=_POSITIVE)
    legacy_base64_folder: str | None = _option(
        None, "also write the old API's base64 .txt copies of its images here (OUTPUT_BASE_<name>.txt, "
        "OUTPUT_PARTIAL_IMAGE_BASE_<name>_<i>.txt), e.g. output/string_images", key="LEGACY_BASE64_FOLDER",
        metavar="DIR", group=LEGACY)
    legacy_output_scale: float = _option(
        1.0, "size of the old API's drawn output images (0.7: the size it drew them at)", key="LEGACY_OUTPUT_SCALE",
        group=LEGACY, check=(lambda value: 0.0 < value <= 1.0,
                             "{flag} must be above 0 and at most 1 (0.7: the old API's size), got {value}"))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ServeConfig":
        """The config of parsed :func:`build_parser` arguments, short forms (``--use-ngrok``) resolved.

        Raises:
            ConfigError: a short form given with another value of its option (``--infer-with-cpu --device cuda``).
        """
        values, problems = {}, []
        for f in fields(cls):
            value = getattr(args, f.name)
            if value is None:  # the flag's default (None where the parser leaves it to the field)
                value = _default(f)
            for switch, (const, _) in f.metadata.get("switches", {}).items():
                if getattr(args, _switch_dest(switch), None) is None:
                    continue
                if value not in (_default(f), const):
                    problems.append(f"{switch} is {option_flag(f.name)} {const}, and {option_flag(f.name)} {value} "
                                    "was given too; keep one")
                value = const
            values[f.name] = value
        if problems:
            raise ConfigError("; ".join(problems))
        return cls(**values)

    @classmethod
    def from_argv(cls, argv: list[str]) -> "ServeConfig":
        """The config of a server command line (without the program), not yet checked (:func:`check_config`)."""
        return cls.from_args(build_parser().parse_args(argv))

    def app_config(self) -> dict:
        """The ``app.config`` settings these options fill (``create_app``'s ``test_config``)."""
        return {f.metadata["key"]: copy.copy(getattr(self, f.name)) for f in fields(self) if "key" in f.metadata}

    def to_argv(self) -> list[str]:
        """The server's flags that give back this config (:func:`to_argv` of every field)."""
        return to_argv({f.name: getattr(self, f.name) for f in fields(self)})


APP_ONLY_DEFAULTS = {
    "CLEANUP_INTERVAL_S": 60,     # expired results are looked for at most this often (on a new result)
    "MAX_WAITING": 32,            # requests queued for the model before new ones get 429
    "URL_TIMEOUT_S": 10.0,        # whole-download limit for {"url": ...}
    "URL_MAX_MB": None,           # size limit of a URL download (default: MAX_UPLOAD_MB)
    "URL_ALLOW_LOOPBACK": False,  # test-only switch: let URL fetches reach 127.0.0.1
    "WARMUP": True,               # run the model once before serving
    "PREDICTOR": None,            # an already loaded Predictor (tests, notebooks) instead of MODEL_DIR
    "WORKER_HEADER": False,       # an X-Worker-Pid header on every answer (set in --workers' processes)
}
"""The app's settings that no flag sets (tests, notebooks and the server program set them)."""

DEFAULTS = {**ServeConfig().app_config(), **APP_ONLY_DEFAULTS}
"""Every ``app.config`` setting of ``create_app`` with its default: :class:`ServeConfig`'s, then the app-only ones."""


def _default(f: Field):
    return f.default_factory() if f.default is MISSING else f.default


def _switch_dest(switch: str) -> str:
    return switch.lstrip("-").replace("-", "_")


def _fields() -> dict[str, Field]:
    return {f.name: f for f in fields(ServeConfig)}


def option_flag(name: str) -> str:
    """The command-line flag of the :class:`ServeConfig` option ``name`` (``--cors-origin`` for ``cors_origins``)."""
    flags = _fields()[name].metadata.get("flags")
    return flags[0] if flags else "--" + name.replace("_", "-")


class OneLineParser(argparse.ArgumentParser):
    """Reports a bad flag in one line (argparse prints the whole usage first), still with exit status 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message}; run with --help to see every option\n")


def build_parser(description: str | None = None, epilog: str | None = None) -> argparse.ArgumentParser:
    """The server's command line: one flag (and its other spellings) per :class:`ServeConfig` field."""
    parser = OneLineParser(description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    groups: dict = {}  # --help's sections, by title
    for f in fields(ServeConfig):
        meta = f.metadata
        if "group" in meta and meta["group"] not in groups:
            groups[meta["group"]] = parser.add_argument_group(meta["group"])
        where = groups[meta["group"]] if "group" in meta else parser
        default = _default(f)
        kind = meta.get("type") or (type(default) if default is not None else str)
        if "env" in meta:  # read when the parser is built, so a test or a program may set it first
            default = os.environ.get(meta["env"]) or default
        help_text = argparse.SUPPRESS if meta.get("hidden") else _help(meta.get("help"), default)
        if f.name == "device":
            # no default on the parser: argparse would check it as given (device_flag imports torch for that), in
            # every process, the one that starts --workers included
            add_device_argument(where, default=None)
        elif f.name == "runtime":
            # --runtime, --calibration-images and --val-json, as scripts/predict.py takes them
            add_runtime_arguments(where, default=default)
        elif f.name in ("calibration_images", "val_json"):
            pass
        elif "const" in meta or isinstance(default, bool):
            const = meta.get("const", True)
            where.add_argument(*meta.get("flags", (option_flag(f.name),)), dest=f.name, action="store_const",
                               const=const, default=default, help=help_text)
        elif isinstance(default, list):
            where.add_argument(option_flag(f.name), dest=f.name, action="append", default=None,
                               metavar=meta.get("metavar"), help=help_text)
        else:
            options = dict(dest=f.name, type=kind, default=default, metavar=meta.get("metavar"),
                           choices=meta.get("choices"), help=help_text)
            if "aliases" in meta:
                add_with_aliases(where, option_flag(f.name), meta["aliases"], **options)
            else:
                where.add_argument(*meta.get("flags", (option_flag(f.name),)), **options)
        for switch, (_, switch_help) in meta.get("switches", {}).items():
            where.add_argument(switch, dest=_switch_dest(switch), action="store_const", const=True, default=None,
                               help=switch_help)
    return parser


def _help(text: str | None, default) -> str | None:
    """The help text, with ``(default: ...)`` unless it says the default itself or there is none."""
    if text is None or "default" in text or default in (None, False, []):
        return text
    return f"{text} (default: {format(default, 'g') if isinstance(default, float) else default})"


def to_argv(values: dict) -> list[str]:
    """The server's flags for these options (:class:`ServeConfig` field -> value), in the dict's order.

    A None value, or one equal to the option's default, is left out, except for the options whose
    default the environment may change (``--host``, ``--port``, ``--workers``); a value that has a
    short form is written as it (``--use-ngrok``, ``--infer-with-cpu``).

    Raises:
        ConfigError: a name that is no option, or a value no flag can give.
    """
    known = _fields()
    argv: list[str] = []
    for name, value in values.items():
        if name not in known:
            raise ConfigError(f"unknown server option '{name}'; the options are ServeConfig's fields: "
                              f"{', '.join(known)}")
        f = known[name]
        if value is None or (value == _default(f) and "env" not in f.metadata):
            continue
        switch = next((s for s, (const, _) in f.metadata.get("switches", {}).items() if value == const), None)
        if switch:
            argv.append(switch)
        elif "const" in f.metadata or isinstance(_default(f), bool):
            if value != f.metadata.get("const", True):
                raise ConfigError(f"{option_flag(name)} sets {name} to {f.metadata.get('const', True)}; "
                                  f"{value!r} cannot be given on the command line")
            argv.append(option_flag(name))
        elif isinstance(value, (list, tuple)):
            for item in value:
                argv += [option_flag(name), str(item)]
        else:
            argv += [option_flag(name), str(value)]
    return argv


def check_config(cfg: ServeConfig) -> None:
    """Refuses values the server cannot use, naming every problem and its fix at once.

    Raises:
        ConfigError: the problems, joined by ``; `` (the server exits with status 2).
    """
    problems = []
    for f in fields(cfg):
        value, flag = getattr(cfg, f.name), option_flag(f.name)
        allowed = f.metadata.get("choices")
        if allowed and value not in allowed:
            problems.append(f"{flag} must be one of {', '.join(map(str, allowed))}, got '{value}'")
        predicate, message = f.metadata.get("check", (None, None))
        if predicate is not None and not predicate(value):
            problems.append(message.format(flag=flag, value=value))
    try:
        check_device(cfg.device)
    except ConfigError as exc:
        problems.append(str(exc))
    if cfg.tunnel == "ngrok" and cfg.auth and _auth_form(cfg.auth) and not 8 <= len(cfg.auth.partition(":")[2]) <= 128:
        problems.append("ngrok's basic auth needs a password of 8 to 128 characters; choose a longer one in "
                        "--auth USER:PASSWORD")
    problems += _model_problems(cfg)
    if problems:
        raise ConfigError("; ".join(problems))


def bare_weights(cfg: ServeConfig) -> str | None:
    """The detectron2 checkpoint to serve (``--weights``, or a file given as ``--model-dir``), or None."""
    if cfg.weights is not None:
        return cfg.weights
    return cfg.model_dir if cfg.model_dir is not None and Path(cfg.model_dir).is_file() else None


def _model_problems(cfg: ServeConfig) -> list[str]:
    """What is wrong with the model the server was given (none, two, or one it cannot load)."""
    if cfg.model_dir is None and cfg.weights is None:
        return ["no model given: pass --model-dir with a model folder (a training's --output-dir), --weights "
                "FILE_OR_URL --config-file CONFIG.yaml for a detectron2 checkpoint, or --model-dir coco to try "
                "torchvision's COCO-trained model"]
    if cfg.model_dir is not None and cfg.weights is not None:
        return ["give --model-dir or --weights, not both"]
    weights = bare_weights(cfg)
    if weights is not None:
        if not cfg.d2_config:
            return [f"'{weights}' is a bare detectron2 checkpoint: pass its --config-file CONFIG.yaml (or the model-zoo "
                    "config name it was trained from, then with --classes NAMES), or import it once with python "
                    f"scripts/import_detectron2.py --weights {weights} --config CONFIG.yaml --classes NAMES "
                    "--output-dir DIR"]
        if not cfg.classes and not Path(cfg.d2_config).is_file():
            return [f"--config-file '{cfg.d2_config}' is not a file, so the number of classes is unknown: pass "
                    "--classes NAMES in the order of the training set's categories"]
        return []
    if not Path(cfg.model_dir).exists() and cfg.model_dir != COCO_MODEL:
        return [f"model folder '{cfg.model_dir}' does not exist; pass --model-dir with the --output-dir of a training "
                "run (it holds model.json and model_final.pth)"]
    return []

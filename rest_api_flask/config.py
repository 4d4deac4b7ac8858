"""The server's settings: one dict of defaults, filled from the command line or a test's overrides."""

from __future__ import annotations

DEFAULTS = {
    "MODEL_DIR": None,            # a model folder written by training
    "UPLOAD_FOLDER": "uploads",   # received images (API ones under api/), legacy routes read from here
    "OUTPUT_FOLDER": "outputs",   # result files (under results/<id>/) and legacy output images
    "DEVICE": "auto",             # --device: auto, cpu, cuda or cuda:N ("cpu" with --infer-with-cpu)
    "FAST": None,                 # the Predictor's fast CPU path (None: on for the CPU); False with --no-fast
    "RUNTIME": "torch",           # torch, openvino, openvino-int8 or auto (OpenVINO only where it passes the parity check)
    "CALIBRATION_IMAGES": None,   # openvino-int8's calibration images (None: the model's training images)
    "THRESHOLD": 0.5,             # default score threshold of a request
    "REMOVE_COLORS": False,       # overlays on a grey copy of the image (a request's remove_colors overrides it)
    "MAX_UPLOAD_MB": 20,          # request body limit (413 above it)
    "MAX_PIXELS": 40_000_000,     # width x height limit, checked before decoding
    "RETENTION_MINUTES": 60,      # results older than this are removed (0: never)
    "CLEANUP_INTERVAL_S": 60,     # expired results are looked for at most this often (on a new result)
    "MAX_BATCH": 16,              # images per batch request
    "MAX_WAITING": 32,            # requests queued for the model before new ones get 429
    "MICRO_BATCH": 1,             # images in one model call from requests that wait together (1: one by one)
    "MICRO_BATCH_WAIT_MS": 5.0,   # how long a request may be held for others to join its model call
    "URL_TIMEOUT_S": 10.0,        # whole-download limit for {"url": ...}
    "URL_MAX_MB": None,           # size limit of a URL download (default: MAX_UPLOAD_MB)
    "URL_ALLOW_LOOPBACK": False,  # test-only switch: let URL fetches reach 127.0.0.1
    "AUTH": None,                 # "user:password": HTTP basic auth on every route but /health
    "API_KEY": None,              # accepted in the X-API-Key header instead of basic auth
    "CORS_ORIGINS": [],           # origins of browser apps allowed to call the API (flask-cors; empty: none)
    "WARMUP": True,               # run the model once before serving
    "PREDICTOR": None,            # an already loaded Predictor (tests, notebooks) instead of MODEL_DIR
    "LEGACY_BASE64_FOLDER": None,  # the old API's base64 .txt copies of its images are written here (None: not)
    "LEGACY_OUTPUT_SCALE": 1.0,   # size of the old API's drawn images (0.7: as it drew them)
    "WORKER_HEADER": False,       # an X-Worker-Pid header on every answer (set in --workers' processes)
}


def config_from_args(args) -> dict:
    """The app config from the parsed ``flask_app.py`` arguments."""
    return {
        "MODEL_DIR": args.model_dir,
        "UPLOAD_FOLDER": args.upload_folder,
        "OUTPUT_FOLDER": args.output_folder,
        "DEVICE": "cpu" if args.infer_with_cpu else args.device,
        "FAST": False if args.no_fast else None,
        "RUNTIME": args.runtime,
        "CALIBRATION_IMAGES": args.calibration_images,
        "THRESHOLD": args.threshold,
        "REMOVE_COLORS": args.remove_colors,
        "MAX_UPLOAD_MB": args.max_upload_mb,
        "MAX_PIXELS": args.max_pixels,
        "RETENTION_MINUTES": args.retention_minutes,
        "AUTH": args.auth,
        "API_KEY": args.api_key,
        "CORS_ORIGINS": list(args.cors_origin or []),
        "MAX_BATCH": args.max_batch,
        "MICRO_BATCH": args.micro_batch,
        "MICRO_BATCH_WAIT_MS": args.micro_batch_wait_ms,
        "LEGACY_BASE64_FOLDER": args.legacy_base64_folder,
        "LEGACY_OUTPUT_SCALE": args.legacy_output_scale,
    }

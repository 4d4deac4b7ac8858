"""The REST API and web page that serve a trained model folder (started by ``flask_app.py``).

    from rest_api_flask import create_app
    app = create_app({"MODEL_DIR": "outputs/demo/model", "UPLOAD_FOLDER": "up", "OUTPUT_FOLDER": "out"})
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

from flask import Flask

from maskrcnn_finetune.errors import ConfigError
from rest_api_flask.config import DEFAULTS


def _worker_header(response):
    response.headers["X-Worker-Pid"] = str(os.getpid())
    return response


def create_app(test_config: dict | None = None) -> Flask:
    """Builds the app: loads and warms up the model, prepares the folders, registers the blueprints.

    Args:
        test_config: settings overriding :data:`rest_api_flask.config.DEFAULTS` (the server program passes
            :meth:`ServeConfig.app_config() <rest_api_flask.config.ServeConfig.app_config>` here).

    Returns:
        The Flask app.
    """
    app = Flask(__name__)
    app.json.sort_keys = False  # keep the documented field order in responses
    app.config.from_mapping(DEFAULTS)
    app.config.update(test_config or {})
    app.config["MAX_CONTENT_LENGTH"] = int(float(app.config["MAX_UPLOAD_MB"]) * 2**20)
    if app.config["URL_MAX_MB"] is None:
        app.config["URL_MAX_MB"] = float(app.config["MAX_UPLOAD_MB"])
    if app.config["MODEL_DIR"] is None and app.config["PREDICTOR"] is None:
        raise ConfigError("no model given; pass --model-dir with a model folder written by scripts/train.py")
    for key in ("UPLOAD_FOLDER", "OUTPUT_FOLDER"):
        folder = Path(app.config[key]).resolve()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the {key.lower().replace('_', ' ')} '{folder}' ({exc.strerror}); "
                              "pass a folder you can write to") from exc
        app.config[key] = str(folder)

    from rest_api_flask import api, auth, compat, errors, inference, results

    errors.init_app(app)
    if app.config["CORS_ORIGINS"]:  # off by default: only pages served by the app itself call it
        from flask_cors import CORS

        CORS(app, origins=app.config["CORS_ORIGINS"], allow_headers=["Content-Type", "Authorization", auth.API_KEY_HEADER],
             expose_headers=["X-Instances"], max_age=600)
    auth.init_app(app)
    if app.config["WORKER_HEADER"]:  # which of --workers' processes answered
        app.after_request(_worker_header)
    results.init_app(app)
    inference.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(api.meta_bp)
    compat.init_app(app)  # the older kits' routes
    # the web page is its own blueprint (rest_api_flask/web.py); the API works without it
    if importlib.util.find_spec("rest_api_flask.web") is not None:
        web = importlib.import_module("rest_api_flask.web")
        if hasattr(web, "bp"):
            app.register_blueprint(web.bp)
    return app

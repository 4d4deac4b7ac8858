"""Optional protection of a public URL: HTTP basic auth (``--auth user:password``) or an API key header.

``/health`` stays open so that a notebook can poll it; every other route asks for credentials
when either is configured.
"""

from __future__ import annotations

import hmac

from flask import Flask, current_app, jsonify, request

API_KEY_HEADER = "X-API-Key"
OPEN_PATHS = {"/health"}


def _matches(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def is_authorised() -> bool:
    """Whether the current request carries the configured credentials (True when none are configured)."""
    config = current_app.config
    if not config.get("AUTH") and not config.get("API_KEY"):
        return True
    if config.get("API_KEY") and _matches(request.headers.get(API_KEY_HEADER), config["API_KEY"]):
        return True
    if config.get("AUTH"):
        user, _, password = config["AUTH"].partition(":")
        given = request.authorization
        if given is not None and given.type == "basic":
            return _matches(given.username, user) and _matches(given.password, password)
    return False


def init_app(app: Flask) -> None:
    """Checks credentials before every request except the open paths."""

    @app.before_request
    def _check_credentials():
        if request.path in OPEN_PATHS or is_authorised():
            return None
        if request.method == "OPTIONS" and current_app.config.get("CORS_ORIGINS"):
            return None  # a browser's CORS preflight never carries credentials; the request after it does
        response = jsonify(error="credentials required: log in with the user and password given to --auth, "
                                 f"or send the key given to --api-key in the {API_KEY_HEADER} header")
        response.status_code = 401
        if current_app.config.get("AUTH"):
            response.headers["WWW-Authenticate"] = 'Basic realm="maskrcnn-finetune"'
        return response

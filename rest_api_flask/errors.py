"""Errors a client can cause, answered as JSON ``{"error": "<problem and fix>"}`` with a fitting status."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """A request the server cannot serve as sent; the message names the problem and the fix.

    Args:
        message: what is wrong and what to send instead.
        status: the HTTP status (400 bad request, 404 unknown, 413 too large, 415 not an image,
            422 unusable content, 429 busy).
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


_HTTP_HINTS = {
    404: "no such page; see /openapi.json for the routes",
    405: "this route does not accept that method; see /openapi.json",
}


def init_app(app: Flask) -> None:
    """Answers every error as JSON, so clients and the web page can show the message."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return jsonify(error=exc.message), exc.status

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        if exc.code == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH") or 0
            message = (f"the request is larger than the server's limit of {limit / 2**20:.0f} MB; "
                       "send a smaller image or start the server with a larger --max-upload-mb")
        else:
            message = _HTTP_HINTS.get(exc.code, exc.description or exc.name)
        response = jsonify(error=message)
        response.status_code = exc.code or 500
        for key, value in (exc.get_headers() or []):
            if key.lower() == "www-authenticate":
                response.headers[key] = value
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        logger.exception("unexpected error while serving a request")
        return jsonify(error=f"internal error ({type(exc).__name__}); the server log has the details"), 500

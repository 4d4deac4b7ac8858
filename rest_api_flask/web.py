"""The web page at ``/``: upload an image, see its masks, download them.

The page is plain HTML + CSS + vanilla JS served from this package (no CDN, no build step), so it
works offline, behind ngrok and behind Colab's proxy. It talks to the REST API only through
relative URLs (``api/v1/predict``), for the same reason. ``create_app`` registers :data:`bp`.
"""

from __future__ import annotations

from flask import Blueprint, current_app, render_template

bp = Blueprint("web", __name__, template_folder="templates", static_folder="static/web",
               static_url_path="/static/web")

# The page loads nothing from elsewhere; images may come from the user's own URL (https/http) or
# from the file they chose (blob:). Inline scripts stay forbidden, so a stray injection cannot run.
_CSP = ("default-src 'self'; img-src 'self' blob: data: https: http:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors *")


def _default_threshold() -> float:
    """The server's default score threshold (``--threshold``, else the model folder's), where the slider starts."""
    return min(1.0, max(0.0, float(current_app.config["THRESHOLD"])))


@bp.route("/")
def index():
    """The page itself.

    Returns:
        The rendered ``web/index.html`` with a restrictive Content-Security-Policy header.
    """
    response = current_app.make_response(render_template("web/index.html", threshold=_default_threshold(),
                                                                   remove_colors=bool(current_app.config.get("REMOVE_COLORS"))))
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response

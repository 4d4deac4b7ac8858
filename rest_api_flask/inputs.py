"""Getting an image into the server safely: bounded decoding, clean file names, guarded URL fetching.

Everything a client sends passes through here before it reaches the model, so every way an
input can be wrong (not an image, truncated, a decompression bomb, a URL that points inside
the network) becomes an :class:`~rest_api_flask.errors.ApiError` with a message and a status.
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import socket
import time
from urllib.parse import urljoin, urlsplit

import numpy as np
import requests
import urllib3
from requests.adapters import HTTPAdapter
from PIL import Image, UnidentifiedImageError
from werkzeug.utils import secure_filename

from maskrcnn_finetune.data.images import load_rgb
from rest_api_flask.errors import ApiError

_FORMATS_HINT = "send a JPEG, PNG, BMP, TIFF, WebP or GIF image"


def decode_image(data: bytes, max_pixels: int, what: str = "the image") -> np.ndarray:
    """Decodes image bytes into an upright ``(H, W, 3)`` uint8 RGB array.

    The pixel count is checked from the header *before* the pixels are decoded, so a small
    file that expands to gigabytes (a decompression bomb) is refused without using the memory.
    Grey, RGBA, palette and 16-bit images are converted; the EXIF orientation is applied.

    Args:
        data: the file's bytes.
        max_pixels: the largest width x height accepted.
        what: how the messages name this input (e.g. ``"image 2 ('a.png')"``).

    Returns:
        The RGB array.

    Raises:
        ApiError: 400 empty, 415 not an image, 413 too many pixels, 422 truncated or damaged.
    """
    if not data:
        raise ApiError(f"{what} is empty (0 bytes); {_FORMATS_HINT}", 400)
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except UnidentifiedImageError as exc:
        raise ApiError(f"{what} is not an image the server can read; {_FORMATS_HINT}", 415) from exc
    except Image.DecompressionBombError as exc:  # Pillow's own limit, above any --max-pixels it makes sense to give
        raise ApiError(f"{what} has more pixels than can be decoded safely; send a smaller image", 413) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ApiError(f"{what} is damaged ({exc}); {_FORMATS_HINT}", 422) from exc
    if width * height > max_pixels:
        raise ApiError(f"{what} is {width}x{height} = {width * height:,} pixels, more than the server accepts "
                       f"({max_pixels:,}); send a smaller image or start the server with a larger --max-pixels", 413)
    try:
        return load_rgb(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ApiError(f"{what} has more pixels than the server accepts; send a smaller image", 413) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ApiError(f"{what} is truncated or damaged ({exc}); send the complete file", 422) from exc


def decode_base64(text, field: str = "image_base64") -> bytes:
    """The bytes of a base64 string (a ``data:image/...;base64,`` prefix is accepted).

    Raises:
        ApiError: 400 when the field is not a string of valid base64.
    """
    if not isinstance(text, str) or not text.strip():
        raise ApiError(f"'{field}' must be a non-empty base64 string of the image file", 400)
    text = text.strip()
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(f"'{field}' is not valid base64; encode the image file's bytes with base64 "
                       "(e.g. base64.b64encode(open('x.jpg', 'rb').read()).decode())", 400) from exc


def clean_filename(name) -> str | None:
    """A file name safe to write inside a folder (``../../x.png`` -> ``x.png``), or None when nothing is left."""
    if not isinstance(name, str):
        return None
    cleaned = secure_filename(name.replace("\\", "/").rsplit("/", 1)[-1])
    return cleaned or None


def _refusal(address: ipaddress._BaseAddress, allow_loopback: bool) -> str | None:
    """Why a resolved address must not be fetched from (None when it may)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if address.is_loopback:
        return None if allow_loopback else "a loopback address"
    if address.is_unspecified or address.is_multicast or address.is_reserved:
        return "a reserved address"  # 0.0.0.0 reaches the local machine on most systems
    if address.is_link_local:
        return "a link-local address (this includes cloud metadata services)"
    if address.is_private:
        return "a private network address"
    if not address.is_global:  # e.g. 100.64.0.0/10 (carrier-grade NAT, some clouds' metadata services)
        return "an address that is not on the public internet"
    return None


def check_url(url: str, allow_loopback: bool = False) -> str:
    """Refuses URLs that are not http(s) or whose host resolves to an internal address.

    Every address the host name resolves to is checked, so a name with one public and one
    private address is refused too.

    Returns:
        The first checked address: the one to connect to (see :func:`fetch_url`).

    Raises:
        ApiError: 400 with the reason.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApiError(f"'url' must be an http:// or https:// address of an image, got {url[:200]!r}", 400)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        raise ApiError(f"the host of the image URL ({parts.hostname}) cannot be resolved ({exc}); check the URL", 400) from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        reason = _refusal(address, allow_loopback)
        if reason:
            raise ApiError(f"the image URL's host {parts.hostname} resolves to {address}, {reason}, which the "
                           "server does not fetch from; upload the image file instead", 400)
    return infos[0][4][0]


class _PinnedHTTPS(HTTPAdapter):
    """HTTPS to an IP address while TLS (SNI and the certificate check) still uses the host name."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs.update(server_hostname=self.hostname, assert_hostname=self.hostname)
        return super().init_poolmanager(*args, **kwargs)


def _pinned(url: str, address: str) -> tuple[str, dict, requests.Session]:
    """The URL rewritten to connect to ``address`` (the checked one), its Host header and a session.

    Connecting to the checked address, not to a second lookup of the name, closes the gap in
    which DNS could answer with an internal address (DNS rebinding).
    """
    parts = urlsplit(url)
    host = f"[{address}]" if ":" in address else address
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    session = requests.Session()
    if parts.scheme == "https":
        session.mount("https://", _PinnedHTTPS(parts.hostname))
    host_header = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    return parts._replace(netloc=netloc).geturl(), {"Host": host_header}, session


def _chunks(response: requests.Response):
    """The body as it arrives, so that the deadline is checked between reads even for a slow trickle."""
    read1 = getattr(response.raw, "read1", None)  # urllib3 >= 2: returns what is available, up to n bytes
    if read1 is None:
        yield from response.iter_content(1024)
        return
    while chunk := read1(64 * 1024, decode_content=True):
        yield chunk


def _get_once(session: requests.Session, target: str, headers: dict, deadline: float, timeout: float,
              max_bytes: int) -> tuple[str | None, bytes]:
    """One GET: ``(redirect location, b"")`` or ``(None, body)``, within the deadline and the size limit."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise ApiError(f"the image URL did not answer within {timeout:g} s; upload the file instead", 422)
    try:
        response = session.get(target, stream=True, allow_redirects=False, timeout=(min(5.0, remaining), remaining),
                               headers={"User-Agent": "maskrcnn-finetune-server", **headers})
    except requests.Timeout as exc:
        raise ApiError(f"the image URL did not answer within {timeout:g} s; upload the file instead", 422) from exc
    except requests.RequestException as exc:
        raise ApiError(f"the image URL cannot be fetched ({type(exc).__name__}); check it opens in a browser, "
                       "or upload the file instead", 422) from exc
    with response:
        if response.is_redirect:
            return response.headers.get("Location", ""), b""
        if response.status_code != 200:
            raise ApiError(f"the image URL answered HTTP {response.status_code}; check the address", 422)
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            raise ApiError(f"the image at the URL is {int(declared) / 2**20:.1f} MB, more than the server's "
                           f"limit of {max_bytes / 2**20:.0f} MB; use a smaller image", 413)
        chunks, size = [], 0
        try:
            for chunk in _chunks(response):
                size += len(chunk)
                if size > max_bytes:
                    raise ApiError(f"the image at the URL is larger than the server's limit of "
                                   f"{max_bytes / 2**20:.0f} MB; use a smaller image", 413)
                if time.monotonic() > deadline:
                    raise ApiError(f"the image URL took longer than {timeout:g} s to download; "
                                   "upload the file instead", 422)
                chunks.append(chunk)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise ApiError(f"the download from the image URL failed ({type(exc).__name__}); "
                           "upload the file instead", 422) from exc
        return None, b"".join(chunks)


def fetch_url(url, *, max_bytes: int, timeout: float, allow_loopback: bool = False, max_redirects: int = 3) -> bytes:
    """Downloads an image from a public URL, within a time and a size limit.

    Redirects are followed by hand so that each new location is checked like the first.

    Args:
        url: an http(s) URL.
        max_bytes: the largest body accepted.
        timeout: seconds for the whole download.
        allow_loopback: test-only: let 127.0.0.1 through (private and link-local stay refused).

    Returns:
        The body.

    Raises:
        ApiError: 400 refused or malformed URL, 413 too large, 422 unreachable, failed or too slow.
    """
    if not isinstance(url, str) or not url.strip():
        raise ApiError("'url' must be a non-empty string: the http(s) address of an image", 400)
    url = url.strip()
    deadline = time.monotonic() + timeout
    for _ in range(max_redirects + 1):
        address = check_url(url, allow_loopback)
        target, headers, session = _pinned(url, address)
        with session:
            location, body = _get_once(session, target, headers, deadline, timeout, max_bytes)
        if location is None:
            return body
        url = urljoin(url, location)
    raise ApiError(f"the image URL redirects more than {max_redirects} times; give the final address", 422)


def parse_threshold(value, default: float) -> float:
    """The score threshold of a request, checked to lie in [0, 1]."""
    if value is None or value == "":
        return default
    try:
        threshold = float(value)
    except (TypeError, ValueError) as exc:
        raise ApiError(f"'threshold' must be a number between 0 and 1, got {str(value)[:50]!r}", 400) from exc
    if not 0.0 <= threshold <= 1.0 or threshold != threshold:
        raise ApiError(f"'threshold' must be between 0 and 1, got {threshold}", 400)
    return threshold

"""Getting a dataset onto the machine: any zip URL, zip file or folder -> a local folder.

:func:`fetch_source` is the entry point. Downloads go through a ``.part`` file and are
checked (size, sha256) before they take their final name, so an interrupted or corrupt
download is never mistaken for a good one; archives are checked (CRCs, total size) and
unpacked without letting any member escape the output folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import stat
import time
import zipfile
import zlib
from pathlib import Path
from urllib.parse import unquote, urlparse

import requests
from tqdm.auto import tqdm

from maskrcnn_finetune.errors import DatasetError

logger = logging.getLogger(__name__)

DEFAULT_MAX_UNZIPPED_BYTES = 20 * 1024**3
"""Refuse archives that unpack to more than this (20 GiB): a zip bomb, or not a dataset."""

ACCEPTED_SOURCES = (
    "a folder of images and annotations, a path to a .zip file, or an http(s):// URL of a .zip file"
)

_CHUNK_BYTES = 1 << 20
_JUNK_FOLDERS = frozenset({"__MACOSX"})  # resource forks that macOS's "Compress" adds


class _RetryableError(Exception):
    """A failure worth another attempt: connection trouble, a timeout or a server-side error."""


def _check_url(url: str) -> None:
    parsed = urlparse(url)
    if parsed.scheme.lower() not in ("http", "https") or not parsed.netloc:
        raise DatasetError(
            f"'{url}' is not an http(s) URL; only http:// and https:// downloads are supported. "
            "Download the file another way and pass its local path instead"
        )


def sha256_of(path: Path) -> str:
    """Hex sha256 digest of a file, read in chunks.

    Args:
        path: the file.

    Returns:
        The lowercase hex digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _mismatches(size: int, digest: str | None, expected_size: int | None, sha256: str | None) -> list[str]:
    problems = []
    if expected_size is not None and size != expected_size:
        problems.append(f"size: expected {expected_size} bytes, got {size}")
    if sha256 is not None and digest is not None and digest != sha256:
        problems.append(f"sha256: expected {sha256}, got {digest}")
    return problems


def _reusable(dest: Path, expected_size: int | None, sha256: str | None) -> bool:
    """Whether an earlier download at ``dest`` passes the checks (it is complete: see the .part)."""
    size = dest.stat().st_size
    if expected_size is not None and size != expected_size:
        logger.warning("%s exists but has %d bytes, not %d; downloading it again", dest, size, expected_size)
        return False
    if sha256 is not None:
        digest = sha256_of(dest)
        if digest != sha256:
            logger.warning("%s exists but its sha256 is %s, not %s; downloading it again", dest, digest, sha256)
            return False
    checked = "size and sha256" if sha256 else "size" if expected_size is not None else "nothing to check against"
    logger.info("Reusing %s, downloaded earlier (%d bytes; %s)", dest, size, checked)
    return True


def _stream(url: str, part: Path, timeout: float) -> tuple[int, str]:
    """One download attempt of ``url`` into ``part``.

    Returns:
        ``(bytes written, hex sha256)``.

    Raises:
        _RetryableError: connection trouble, timeout, truncated body, HTTP 5xx or 429.
        DatasetError: any other HTTP error (a 4xx will not go away by asking again).
    """
    digest = hashlib.sha256()
    written = 0
    try:
        with requests.get(url, stream=True, timeout=timeout) as response:
            status = response.status_code
            if status >= 500 or status == 429:  # server trouble or rate limit: may pass
                raise _RetryableError(f"HTTP {status} {response.reason}")
            if status >= 400:
                raise DatasetError(
                    f"{url} answered HTTP {status} {response.reason}: check that the URL is right and "
                    "publicly reachable (open it in a browser)"
                )
            # Content-Length counts encoded bytes; only then does it equal the bytes we write.
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() and "Content-Encoding" not in response.headers else None
            with open(part, "wb") as fh, tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=part.name[: -len(".part")], leave=False
            ) as bar:
                for chunk in response.iter_content(chunk_size=_CHUNK_BYTES):
                    fh.write(chunk)
                    digest.update(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
    except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
        raise _RetryableError(f"{type(exc).__name__}: {exc}") from exc
    except requests.RequestException as exc:  # invalid URL, too many redirects, ...
        raise DatasetError(f"cannot download {url}: {exc}; check the URL") from exc
    if total is not None and written != total:
        raise _RetryableError(f"connection closed after {written} of {total} bytes")
    return written, digest.hexdigest()


def download_file(
    url: str,
    dest,
    *,
    expected_size: int | None = None,
    sha256: str | None = None,
    retries: int = 3,
    timeout: float = 30,
    backoff: float = 1.0,
) -> Path:
    """Downloads ``url`` to ``dest``, checked, retried and atomic.

    The body streams into ``dest + ".part"`` and is renamed to ``dest`` only once complete
    and checked, so a file at ``dest`` is always a whole download. An existing ``dest``
    that passes the checks is reused without any request.

    Args:
        url: an http:// or https:// URL.
        dest: the file to write; its folder is created.
        expected_size: the file's size in bytes, or None not to check it.
        sha256: the file's hex sha256, or None not to check it (the digest of what was
            downloaded is logged either way, so that it can be pinned).
        retries: further attempts after a connection error, timeout or HTTP 5xx/429 (never
            after another 4xx).
        timeout: seconds to wait for the connection and for each read.
        backoff: seconds before the first retry, doubling for each one after.

    Returns:
        ``dest`` as a Path.

    Raises:
        DatasetError: bad URL, an HTTP error, failure after all retries, or a size/sha256
            mismatch (the partial file is deleted).
    """
    _check_url(url)
    dest = Path(dest)
    sha256 = sha256.strip().lower() if sha256 else None
    if dest.is_file() and _reusable(dest, expected_size, sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    logger.info("Downloading %s to %s", url, dest)
    for attempt in range(retries + 1):
        try:
            size, digest = _stream(url, part, timeout)
            break
        except _RetryableError as exc:
            part.unlink(missing_ok=True)
            if attempt == retries:
                raise DatasetError(
                    f"downloading {url} failed after {attempt + 1} attempt(s), last: {exc}",
                    hint="Check the internet connection and that the server is up, then run again.",
                ) from exc
            delay = backoff * 2**attempt
            logger.warning("Download of %s failed (%s); retry %d of %d in %.1f s", url, exc, attempt + 1, retries, delay)
            time.sleep(delay)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
    problems = _mismatches(size, digest, expected_size, sha256)
    if problems:
        part.unlink(missing_ok=True)
        raise DatasetError(
            [f"{url}: {p}" for p in problems],
            hint="The download may be corrupt, or the file at the URL may have changed. Run again to retry; "
            "if it keeps happening, check the URL and the expected size/sha256.",
        )
    os.replace(part, dest)
    logger.info("Downloaded %s (%d bytes, sha256 %s)", dest, size, digest)
    return dest


def _describe_non_zip(path: Path, exc: Exception) -> str:
    with open(path, "rb") as fh:
        head = fh.read(512)
    if not head:
        return "it is empty"
    if head.lstrip()[:1] == b"<" and b"html" in head.lower():
        return "it is an HTML page (the URL probably leads to a web page, not to the file itself)"
    return f"{exc} (it starts with {head[:16]!r})"


def _member_parts(info: zipfile.ZipInfo) -> tuple[list[str], str | None]:
    """A member's path components, and why it is unsafe to extract (None when it is safe)."""
    name = info.filename.replace("\\", "/")  # zips made on Windows may use backslashes
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        return parts, "has an absolute path"
    if ".." in parts:
        return parts, "has a '..' component that would write outside the output folder"
    if stat.S_ISLNK(info.external_attr >> 16):
        return parts, "is a symbolic link"
    return parts, None


def _check_archive(zf: zipfile.ZipFile, zip_path: Path, max_total_size: int) -> list[tuple[zipfile.ZipInfo, list[str]]]:
    """Validates every member before anything is written; returns the members to extract."""
    members, unsafe = [], []
    for info in zf.infolist():
        parts, problem = _member_parts(info)
        if problem:
            unsafe.append(f"{zip_path}: member '{info.filename}' {problem}")
        elif parts and parts[0] not in _JUNK_FOLDERS:
            members.append((info, parts))
    if unsafe:
        raise DatasetError(unsafe, hint="The archive is unsafe to unpack; nothing was extracted. Get it from a trusted source.")
    total = sum(info.file_size for info, _ in members)
    if total > max_total_size:
        raise DatasetError(
            f"{zip_path} would unpack to {total / 1024**3:.1f} GiB, over the {max_total_size / 1024**3:.1f} GiB cap; "
            "if that size is expected, pass a larger max_total_size"
        )
    try:
        bad = zf.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        bad, reason = "", str(exc)
    except (NotImplementedError, RuntimeError) as exc:  # unsupported compression, encrypted member
        raise DatasetError(f"{zip_path} cannot be unpacked: {exc}; re-create it as a plain (deflate) zip") from exc
    else:
        reason = "CRC mismatch"
    if bad is not None:
        where = f" in member '{bad}'" if bad else ""
        raise DatasetError(
            f"{zip_path} is corrupt ({reason}{where})",
            hint="Delete it and download it again; if that keeps failing, the file at the source is damaged.",
        )
    return members


def extract_zip(zip_path, out_dir, *, max_total_size: int = DEFAULT_MAX_UNZIPPED_BYTES) -> Path:
    """Unpacks a zip file safely into ``out_dir``.

    Every member is checked before anything is written: absolute paths, ``..`` components
    (zip-slip) and symbolic links are refused, CRCs are verified and the total unpacked size
    is capped. ``__MACOSX/`` folders are skipped. Files already in ``out_dir`` are overwritten.

    Args:
        zip_path: the zip file.
        out_dir: the folder to unpack into (created).
        max_total_size: refuse archives that unpack to more bytes than this.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        DatasetError: the file is missing, not a zip, corrupt, unsafe or too large.
    """
    zip_path, out_dir = Path(zip_path), Path(out_dir)
    if not zip_path.is_file():
        raise DatasetError(f"zip file '{zip_path}' does not exist; check the path")
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(
            f"{zip_path} is not a zip file: {_describe_non_zip(zip_path, exc)}",
            hint="Pass a .zip archive (or the folder it unpacks to).",
        ) from exc
    with zf:
        members = _check_archive(zf, zip_path, max_total_size)
        out_dir.mkdir(parents=True, exist_ok=True)
        root = out_dir.resolve()
        for info, parts in members:
            target = out_dir.joinpath(*parts)
            if not target.resolve().is_relative_to(root):  # e.g. through a symlink already in out_dir
                raise DatasetError(f"{zip_path}: member '{info.filename}' would be written outside {out_dir}")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK_BYTES)
    logger.info("Extracted %d member(s) of %s into %s", len(members), zip_path, out_dir)
    return out_dir


def _single_folder(folder: Path) -> Path:
    """The one folder inside ``folder`` when that is all it holds (hidden and junk entries aside)."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".") and p.name not in _JUNK_FOLDERS]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return folder


def _download_name(url: str, suffix: str = ".zip") -> str:
    """A file name for a URL's download: its last path segment plus a short hash of the URL, ending in ``suffix``.

    The hash keeps two URLs ending in the same name (``.../download``) from sharing, and
    wrongly reusing, one file.
    """
    base = unquote(Path(urlparse(url).path).name)
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "download"
    stem = base[: -len(suffix)] if base.lower().endswith(suffix) else base
    return f"{stem}-{hashlib.sha1(url.encode()).hexdigest()[:8]}{suffix}"


def fetch_file(source, work_dir, suffix: str) -> Path:
    """A local file as it is, or an http(s) URL's file downloaded once into ``work_dir`` (checked, retried, atomic).

    Raises:
        DatasetError: a path that is not a file, another kind of URL, or a failed download.
    """
    text = str(source).strip()
    if urlparse(text).scheme.lower() in ("http", "https"):
        return download_file(text, Path(work_dir) / _download_name(text, suffix))
    path = Path(text).expanduser()
    if "://" in text or not path.is_file():
        raise DatasetError(f"'{text}' is neither a file nor an http(s) URL; give the path or the address of the "
                           f"{suffix} file")
    return path


def fetch_source(source, work_dir) -> Path:
    """Turns "any zip URL or folder" into a local folder.

    Args:
        source: a folder (returned as is), a path to a ``.zip`` file (unpacked into
            ``work_dir/<zip stem>/``) or an http(s) URL of a zip (downloaded into
            ``work_dir`` and unpacked beside it).
        work_dir: where downloads and unpacked archives go.

    Returns:
        The folder with the data; when an archive unpacks to a single top-level folder,
        that folder.

    Raises:
        DatasetError: the source is none of the accepted forms, or cannot be fetched.
    """
    text = str(source).strip()
    work_dir = Path(work_dir)
    scheme = urlparse(text).scheme.lower()
    if scheme in ("http", "https"):
        name = _download_name(text)
        zip_path = download_file(text, work_dir / name)
        return _single_folder(extract_zip(zip_path, work_dir / Path(name).stem))
    if "://" in text:
        raise DatasetError(f"unsupported source '{text}' ({scheme}:// URLs cannot be fetched); give {ACCEPTED_SOURCES}")
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.is_file() and path.suffix.lower() == ".zip":
        return _single_folder(extract_zip(path, work_dir / path.stem))
    what = "is a file but not a .zip" if path.is_file() else "does not exist"
    raise DatasetError(f"source '{text}' {what}; give {ACCEPTED_SOURCES}")

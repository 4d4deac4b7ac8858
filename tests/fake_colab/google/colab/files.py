"""As google/colab/files.py ``upload``: Colab writes each file into ``target_dir`` itself."""

import os
from pathlib import Path

from google.colab._record import record


def _get_unique_filename(filename):
    if not os.path.lexists(filename):
        return filename
    base, ext = os.path.splitext(filename)
    n = 1
    while os.path.lexists(f"{base} ({n}){ext}"):
        n += 1
    return f"{base} ({n}){ext}"


def upload(target_dir=""):
    record("files.upload")  # the browser's file picker
    picked = os.environ.get("FAKE_COLAB_UPLOAD")
    chosen = sorted(p for p in Path(picked).iterdir() if p.is_file()) if picked else []  # none: cancelled
    if target_dir:
        os.makedirs(target_dir, exist_ok=True)
    result = {}
    for path in chosen:
        local = _get_unique_filename(os.path.join(target_dir, path.name))
        print(f"Saving {path.name} to {local}")
        data = path.read_bytes()
        with open(local, "ab") as f:
            f.write(data)
        result[local] = data
    return result


def download(filename):
    """As Colab's: a missing file raises FileNotFoundError; otherwise the browser would receive it
    (here the name is appended to $FAKE_COLAB_DOWNLOADS, one per line, for the test to read)."""
    if not os.path.exists(filename):
        raise FileNotFoundError(f"Cannot find file: {filename}")
    log = os.environ.get("FAKE_COLAB_DOWNLOADS")
    if log:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"{filename}\n")

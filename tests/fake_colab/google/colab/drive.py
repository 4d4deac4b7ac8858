"""As google/colab/drive.py ``mount``: the folder ``$FAKE_COLAB_DRIVE`` appears at the mount point."""

import os

from google.colab._record import record


def mount(mountpoint, force_remount=False, timeout_ms=120000, readonly=False):
    drive = os.environ["FAKE_COLAB_DRIVE"]
    os.makedirs(os.path.join(drive, "MyDrive"), exist_ok=True)
    if os.path.islink(mountpoint) and not force_remount:
        print(f"Drive already mounted at {mountpoint}; to attempt to forcibly remount, call drive.mount(\"{mountpoint}\", force_remount=True).")
        return
    record("drive.mount")  # Colab's permission dialog
    os.makedirs(os.path.dirname(mountpoint.rstrip("/")), exist_ok=True)
    if not os.path.islink(mountpoint):
        os.symlink(drive, mountpoint)
    print(f"Mounted at {mountpoint}")

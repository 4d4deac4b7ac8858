"""Not part of colabtools: the stand-in notes each call that needs a person at the screen (a dialog in the
browser) by appending a line to ``$FAKE_COLAB_CALLS``, so that a test sees when a notebook asks."""

import os


def record(what):
    log = os.environ.get("FAKE_COLAB_CALLS")
    if log:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"{what}\n")

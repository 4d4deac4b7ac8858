"""Where the stand-in ``google.colab`` package lives (tests/fake_colab; see its README)."""

from pathlib import Path

FAKE_COLAB = Path(__file__).resolve().parent / "fake_colab"

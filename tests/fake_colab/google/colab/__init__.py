"""Stand-in for ``google.colab`` (see tests/fake_colab/README.md)."""

from google.colab import drive, errors, files, output, userdata  # noqa: F401 - as the real package

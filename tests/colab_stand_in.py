"""Where the stand-in ``google.colab`` package lives (tests/fake_colab; see its README), and a stand-in for
the notebook's kernel as colabtools reaches it (``IPython.get_ipython().kernel``)."""

from pathlib import Path
from types import SimpleNamespace

FAKE_COLAB = Path(__file__).resolve().parent / "fake_colab"


def notebook_shell() -> SimpleNamespace:
    """What ``IPython.get_ipython()`` returns in the notebook's kernel, as far as colabtools uses it: a shell
    with ``.kernel`` (its ``.parent`` the kernel app, its ``.shell.parent_header`` the current cell's).

    In-process tests stand in the notebook's kernel with it (a real kernel runs the notebooks in
    tests/test_notebooks.py); without it, ``get_ipython()`` is None, as in a ``!python`` child."""
    kernel = SimpleNamespace(parent=SimpleNamespace(), shell=SimpleNamespace(parent_header={}))
    return SimpleNamespace(kernel=kernel)

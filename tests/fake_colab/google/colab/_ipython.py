"""As google/colab/_ipython.py: the kernel is reached through ``IPython.get_ipython().kernel``.

Only an IPython kernel's shell has ``.kernel``; in any other process (``!python``, a background
server, a terminal) ``get_ipython()`` is None and these fail with AttributeError, as Colab's do.
"""

import IPython


def get_ipython():
    return IPython.get_ipython()


def get_kernel():
    return get_ipython().kernel


def get_kernelapp():
    return get_ipython().kernel.parent


def in_ipython():
    return hasattr(IPython.get_ipython(), "kernel")

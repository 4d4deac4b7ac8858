"""As google/colab/_message.py ``blocking_request``: a request to the browser tab through the kernel.

The real one sends the request on the kernel's iopub socket (``get_kernelapp()`` first, which fails
with AttributeError outside the notebook's kernel) and waits up to ``timeout_sec`` for the reply.
Here "the browser" answers at once from ``$FAKE_COLAB_SECRETS`` (``GetSecret``), or not at all
(None, as after the timeout) when ``FAKE_COLAB_BROWSER=absent``.
"""

import json
import os

from google.colab import _ipython as ipython
from google.colab import errors


class MessageError(errors.Error):
    """Thrown on error response from frontend."""


def send_request(request_type, request_body, parent=None, expect_reply=True):
    ipython.get_kernelapp()  # what the real one needs first: the kernel application
    return 1 if expect_reply else None


def _browser_reply(request_type, request):
    if os.environ.get("FAKE_COLAB_BROWSER") == "absent":
        return None
    if request_type == "GetSecret":
        secrets = json.loads(os.environ.get("FAKE_COLAB_SECRETS") or "{}")
        key = request["key"]
        if key not in secrets:
            return {"exists": False}
        if secrets[key] is None:  # the notebook has no access to it
            return {"exists": True, "access": False}
        return {"exists": True, "access": True, "payload": secrets[key]}
    raise NotImplementedError(f"the stand-in does not answer {request_type!r}")


def blocking_request(request_type, request="", timeout_sec=5, parent=None):
    send_request(request_type, request, parent=parent, expect_reply=True)
    return _browser_reply(request_type, request)

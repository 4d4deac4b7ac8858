"""As google/colab/output: ``eval_js`` (None after ``timeout_sec`` without an answer; AttributeError outside
the notebook's kernel, as colabtools' own) and the port iframe."""

import json
import os
import re
import time

from IPython import display

from google.colab import _ipython


def eval_js(script, ignore_result=False, timeout_sec=None):
    _ipython.get_kernel().shell.parent_header  # the real one sends the request through the kernel first
    if ignore_result:
        return None
    if os.environ.get("FAKE_COLAB_BROWSER") == "absent":  # no browser tab answers: the real one waits
        if timeout_sec is None:
            raise AssertionError("eval_js without timeout_sec would hang here forever")
        time.sleep(timeout_sec)
        return None
    match = re.fullmatch(r"google\.colab\.kernel\.proxyPort\((\d+)(?:, .*)?\)", script)
    if match:
        return f"https://{match.group(1)}-m-s-fake.colab.googleusercontent.com/"
    raise NotImplementedError(f"the stand-in does not evaluate {script!r}")


def serve_kernel_port_as_iframe(port, path="/", width="100%", height="400", cache_in_notebook=False):
    code = ("(async (port, path, width, height, cache, element) => { /* iframe to proxyPort(port) */ })"
            f"({port}, {json.dumps(path)}, {json.dumps(width)}, {json.dumps(height)}, "
            f"{json.dumps(cache_in_notebook)}, window.element)")
    display.display(display.Javascript(code))

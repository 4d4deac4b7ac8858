"""As google/colab/userdata.py: the same exception classes and messages, and the same path to the
browser tab (``_message.blocking_request``), which works only in the notebook's kernel."""

import re as _re
import threading

from google.colab import _message
from google.colab import errors
from google.colab._record import record


class NotebookAccessError(Exception):
    def __init__(self, key):
        super().__init__(f"Notebook does not have access to secret {key}")


class SecretNotFoundError(errors.Error):
    def __init__(self, key):
        super().__init__(f"Secret {key} does not exist.")


class TimeoutException(errors.Error):
    def __init__(self, key):
        super().__init__(f"Requesting secret {key} timed out. Secrets can only be fetched when running from the Colab UI.")


_userdata_lock = threading.Lock()


def get(key):
    if not key or not isinstance(key, str):
        raise ValueError("Please enter a valid secret name")
    if _re.search(r"\s", key):
        raise ValueError("Secret name cannot contain spaces or whitespace")
    record(f"userdata.get {key}")  # a notebook's first access to a secret asks the user to grant it
    with _userdata_lock:
        resp = _message.blocking_request("GetSecret", request={"key": key}, timeout_sec=10)
    if not resp:
        raise TimeoutException(key)
    if not resp.get("exists", False):
        raise SecretNotFoundError(key)
    if not resp.get("access", False):
        raise NotebookAccessError(key)
    return resp.get("payload", "")

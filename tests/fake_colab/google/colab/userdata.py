"""As google/colab/userdata.py: the same exception classes and messages."""

import json
import os

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


def get(key):
    if not key or not isinstance(key, str):
        raise ValueError("Please enter a valid secret name")
    record(f"userdata.get {key}")  # a notebook's first access to a secret asks the user to grant it
    if os.environ.get("FAKE_COLAB_BROWSER") == "absent":
        raise TimeoutException(key)
    secrets = json.loads(os.environ.get("FAKE_COLAB_SECRETS") or "{}")
    if key not in secrets:
        raise SecretNotFoundError(key)
    if secrets[key] is None:
        raise NotebookAccessError(key)
    return secrets[key]

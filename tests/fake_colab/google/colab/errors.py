class Error(Exception):
    """Base class for all Colab errors (as google.colab.errors.Error)."""

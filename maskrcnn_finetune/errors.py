"""Errors a user can cause, with messages that name the problem and the fix.

Every error class the kit raises for a user lives here, so callers catch them without importing the
stage that raises them. The server answers its clients with its own ``rest_api_flask.errors.ApiError``
(an HTTP status and a JSON body), the one boundary with another rule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from maskrcnn_finetune.parity import ParityReport


class KitError(Exception):
    """Base class of every error the kit reports to a user (not a bug in the kit)."""


class DatasetError(KitError, ValueError):
    """A dataset (labelme folder, COCO json, zip, download) cannot be used as it is.

    The message lists every problem found, each with the file it came from and what
    to do about it, so that a user fixes them all in one pass.
    """

    def __init__(self, problems, hint=None):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        shown = self.problems[:25]
        lines = [f"- {p}" for p in shown]
        if len(self.problems) > len(shown):
            lines.append(f"- ... and {len(self.problems) - len(shown)} more")
        text = "\n".join(lines) if len(self.problems) > 1 else self.problems[0]
        if hint:
            text += f"\n{hint}"
        super().__init__(text)


class ConfigError(KitError, ValueError):
    """An option or argument has a value the kit cannot use; the message says what to pass."""


class ModelDirError(KitError):
    """A model folder is missing something, or its parts do not fit together."""


class CheckpointError(KitError):
    """A detectron2 checkpoint cannot be read, or does not fit its config."""


class WeightsUnavailableError(KitError):
    """Pretrained weights were asked for but cannot be fetched (offline, blocked, ...)."""


class TrainingError(KitError):
    """Training cannot go on (e.g. the loss diverged); the message says what to change."""


class ExportError(KitError):
    """A model folder cannot be exported as asked (wrong engine, existing file, bad images)."""


class ExportParityError(ExportError):
    """The exported model does not predict what the eager model predicts; it must not be used.

    Attributes:
        report: the :class:`~maskrcnn_finetune.parity.ParityReport` that failed.
    """

    def __init__(self, message: str, report: ParityReport) -> None:
        super().__init__(message)
        self.report = report


class ServerStartError(KitError):
    """The server process stopped or did not answer in time; the message holds the end of its log."""


class TunnelError(KitError):
    """A tunnel could not be opened; the message says what to do. The server still serves locally."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its class name when it has none), for quoting
    a library's error inside one of ours: ``f"... ({first_line(exc)}); do this"``."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__

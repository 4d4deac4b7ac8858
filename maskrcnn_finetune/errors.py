"""Errors a user can cause, with messages that name the problem and the fix."""


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


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its class name when it has none), for quoting
    a library's error inside one of ours: ``f"... ({first_line(exc)}); do this"``."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__

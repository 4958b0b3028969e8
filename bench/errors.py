"""The one exception type for mistakes a user can make and fix, and bounded quotes of bad values."""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_EXCERPT", "MAX_MESSAGE", "UserError", "excerpt", "shorten"]

MAX_EXCERPT = 80  # characters of an offending value an error sentence quotes
MAX_MESSAGE = 2000  # characters of a whole sentence (a backstop: quotes are excerpts already)


def excerpt(value: Any, limit: int = MAX_EXCERPT) -> str:
    """``repr(value)``, or its start and end around the number of characters left out.

    Example:
        >>> excerpt("x" * 1000, 20)
        "'xxxxxxxxx...[987 characters left out]...xxxx'"
    """
    return shorten(repr(value), limit)


def shorten(text: str, limit: int = MAX_EXCERPT) -> str:
    """``text``, or its start and end around the number of characters left out (see excerpt)."""
    if len(text) <= limit:
        return text
    head, tail = text[: limit // 2], text[-(limit // 4) :]
    return f"{head}...[{len(text) - len(head) - len(tail)} characters left out]...{tail}"


class UserError(ValueError):
    """A mistake in user input (suite file, flag, data path, plugin output).

    The message is one clear sentence that names the field or path and says how to fix it.
    The CLI prints it without a traceback and exits with status 2. A message longer than
    :data:`MAX_MESSAGE` characters (a quoted value that was not shortened) keeps its start and
    its end, where the fix is.
    """

    def __init__(self, message: object = "", *args: object) -> None:
        text = str(message)
        if len(text) > MAX_MESSAGE:
            cut = len(text) - MAX_MESSAGE
            text = f"{text[: MAX_MESSAGE // 2]}...[{cut} characters left out]...{text[-MAX_MESSAGE // 2 :]}"
        super().__init__(text, *args)

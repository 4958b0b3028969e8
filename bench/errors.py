"""The one exception type for mistakes a user can make and fix."""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in user input (suite file, flag, data path, plugin output).

    The message is one clear sentence that names the field or path and says how to fix it.
    The CLI prints it without a traceback and exits with status 2.
    """

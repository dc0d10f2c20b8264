"""The one error contract: `UserError` is what a user can fix; everything else is a bug.

Library code raises a subclass of `UserError` whose message is one line that says what
is wrong and how to fix it; the `llm-jax` dispatcher prints it as `error: ...` and exits
with code 2. Any other exception reaching the dispatcher is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user must change (a flag, a config value, a file); one-line message."""

    def __str__(self) -> str:  # one line, whatever the raiser's formatting
        return " ".join(super().__str__().split())


class UsageError(UserError):
    """Wrong command-line usage: a missing or malformed flag."""

"""The text of an exception for messages and states, even when its ``__str__`` raises.

An error message built with ``f"{exc}"`` would raise in turn, and the run whose failure it
describes would be lost (or, on the loop, the runner stuck): such an exception reads as
``<exception str() failed>``, as the ``traceback`` module prints it.
"""

from __future__ import annotations

UNPRINTABLE = "<exception str() failed>"


def message_of(exc: BaseException) -> str:
    """``str(exc)``, or a placeholder if that raises."""
    try:
        return str(exc)
    except (Exception, SystemExit):  # (a KeyboardInterrupt here is the user's Ctrl-C)
        return UNPRINTABLE


def error_text(exc: BaseException) -> str:
    """``"TypeName: message"``."""
    return f"{type(exc).__name__}: {message_of(exc)}"

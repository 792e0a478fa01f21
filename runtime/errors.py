"""The one exception type for user mistakes, shared by every inctrl package, and how a message
quotes what the user gave.

It lives in the runtime, the package everything else may import, so that ``inctrl``,
``inctrl_export`` and ``inctrl_runtime`` raise and catch the same class.
"""


class InputError(Exception):
    """A problem with what the user gave us. Command lines print it as one line and exit 2."""


class BundleError(InputError):
    """A bundle that is missing, tampered with, or of another schema: refused, never guessed."""


def one_line(text: str) -> str:
    """``text`` with newlines and other control characters escaped (``\\n``), so that what a
    message quotes (a file or category name, in a sentence or a suggested command) cannot
    split it or move the cursor, wherever the message is shown (a terminal, a served error)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)

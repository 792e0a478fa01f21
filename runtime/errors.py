"""The one exception type for user mistakes, shared by every inctrl package.

It lives in the runtime, the package everything else may import, so that ``inctrl``,
``inctrl_export`` and ``inctrl_runtime`` raise and catch the same class.
"""


class InputError(Exception):
    """A problem with what the user gave us. Command lines print it as one line and exit 2."""


class BundleError(InputError):
    """A bundle that is missing, tampered with, or of another schema: refused, never guessed."""

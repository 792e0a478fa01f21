"""The one exception type for user mistakes: bad paths, bad images, bad checkpoints.

Defined in the torch-free runtime so that all packages share one class.
"""

from inctrl_runtime.errors import InputError

__all__ = ["InputError"]

"""The one exception type for user mistakes: bad paths, bad images, bad checkpoints."""


class InputError(Exception):
    """A problem with what the user gave us. Command lines print it as one line and exit 2."""

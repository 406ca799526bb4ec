"""User-facing errors: one line, naming the file and the fix. The CLI prints them without a traceback."""


class StyleVARError(Exception):
    """Base class of errors a user can cause and fix (bad path, bad image, wrong checkpoint)."""


class ConfigError(StyleVARError, ValueError):
    """An invalid configuration value."""


class ImageError(StyleVARError):
    """An input image that is missing, unreadable, too small or too large."""


class CheckpointError(StyleVARError):
    """A checkpoint that is missing, unreadable, of the wrong kind or not allowed to load."""


class DataError(StyleVARError):
    """A dataset that is missing, empty, laid out unexpectedly, or holds missing/unreadable files."""

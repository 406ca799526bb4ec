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


class MissingDependencyError(StyleVARError, ImportError):
    """An optional package (an extra such as ``stylevar[rewards]``) that a feature needs is not installed."""


class MissingWeightsError(CheckpointError, FileNotFoundError):
    """Pretrained weights (of a metric or reward model) that are neither on disk nor downloadable now."""

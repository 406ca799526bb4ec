"""User-facing errors: one line, naming the file and the fix. The CLI prints them without a traceback."""


class StyleVARError(Exception):
    """Base class of errors a user can cause and fix (bad path, bad image, wrong checkpoint)."""


class ConfigError(StyleVARError, ValueError):
    """An invalid configuration value."""


class ImageError(StyleVARError):
    """An input image that is missing, unreadable, too small or too large."""


class VideoError(ImageError):
    """A video that cannot be read or written (one line naming the file)."""


class Cancelled(StyleVARError):
    """A request stopped on purpose (the web page's Stop button or a closed page), at a scale boundary."""


class CheckpointError(StyleVARError):
    """A checkpoint that is missing, unreadable, of the wrong kind or not allowed to load."""


class DataError(StyleVARError):
    """A dataset that is missing, empty, laid out unexpectedly, or holds missing/unreadable files."""


class MissingDependencyError(StyleVARError, ImportError):
    """An optional package (an extra such as ``stylevar[rewards]``) that a feature needs is not installed."""


class NonFiniteLossError(StyleVARError):
    """Training stopped on a NaN/inf loss (``on_nonfinite="stop"``); the last good state was saved."""


class OtherRankFailed(StyleVARError):
    """Raised on the other processes of a ``torchrun`` job when rank 0 failed while preparing the run
    (rank 0 reports the reason; the others exit quietly)."""


class MissingWeightsError(CheckpointError, FileNotFoundError):
    """Pretrained weights (of a metric or reward model) that are neither on disk nor downloadable now."""


class Interrupted(KeyboardInterrupt):
    """A stop signal (SIGTERM, SIGHUP) received by the command line, raised where the program is so the run
    ends as Ctrl-C ends it: temporary files removed, its summary printed; the exit code is 128 + the signal."""

    def __init__(self, signum: int, name: str):
        super().__init__(name)
        self.signum, self.name = signum, name

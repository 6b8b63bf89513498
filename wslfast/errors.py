"""The errors a user causes (a wrong key, a damaged file, data that cannot fill a batch), shared by every
package: the command lines print these as one `error: ...` line and exit 1; anything else is a bug and
keeps its traceback. Import-free (no torch), so data workers and the engine can both raise them.
"""
from __future__ import annotations

__all__ = ["UserError", "ConfigError", "DataError", "CheckpointError", "RunFolderError", "WordNetMissingError"]


class UserError(Exception):
    """An error caused by the input (files, keys, data), to be shown as one line naming what was wrong."""


class ConfigError(UserError, ValueError):
    """A config file or override the declared keys cannot accept."""


class DataError(UserError, ValueError):
    """Data that cannot be used (a damaged shard or input file, too few samples for a batch, no images):
    one line naming the file or folder and what was expected."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file that cannot be read or lacks what a resume needs."""


class RunFolderError(UserError, RuntimeError):
    """An output folder that belongs to another run."""


class WordNetMissingError(UserError, RuntimeError):
    """WordNet's files are not installed (the message says how to install them)."""

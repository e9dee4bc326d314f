"""Errors a run stops with on purpose. The CLI prints their message (no traceback) and exits 1."""


class TrainerError(RuntimeError):
    """A fault the trainer detected; the message says what happened, where, and what to do."""


class DivergenceError(TrainerError):
    """The loss, the gradients or the weights became non-finite and the run cannot continue."""


class CheckpointError(TrainerError):
    """A checkpoint could not be written or read."""


class DiskFullError(CheckpointError):
    """The disk filled up while writing a checkpoint (``errno`` ENOSPC / EDQUOT)."""

    def __init__(self, message: str, errno: int):
        super().__init__(message)
        self.errno = errno


class RunMismatchError(TrainerError):
    """``output_dir`` or the checkpoint to resume belongs to another run."""


class DataError(TrainerError):
    """The data cannot be used as given (an empty split, a prompt past the context); the message names it."""


class ImageDecodeError(DataError):
    """A dataset row's image cannot be decoded; the message names the file and row."""

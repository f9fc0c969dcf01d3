"""Error types the exporter raises; the CLI prints their message as one line and exits 2."""


class ExportError(Exception):
    """Base class: the message names the cause and, where there is one, the fix."""


class CheckpointError(ExportError):
    """A checkpoint is missing, damaged, of an unsupported version, or not a checkpoint."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint asks for something the reader refuses (a global outside the allow-list, an
    operation on a class, a view or size beyond what the file holds); nothing was executed."""


class InputError(ExportError):
    """A user input other than a checkpoint is unusable (reference clip, voice name, pairing)."""

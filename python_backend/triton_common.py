"""Small pieces every Triton adapter of this project uses (import only inside Triton's stub)."""
from __future__ import annotations

import logging
from pathlib import Path

import triton_python_backend_utils as pb_utils


def version_dir(args: dict) -> Path:
    """The loaded version's folder: Triton passes the model folder and the version number."""
    return Path(args["model_repository"]) / str(args["model_version"])


def ensure_logging() -> None:
    """Log lines from the stub reach Triton's log (its stdout) with our stage prefixes."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")


def error_response(message: str, code) -> "pb_utils.InferenceResponse":
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))

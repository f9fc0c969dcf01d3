"""Triton Python model ``gsv_ssl``: 16 kHz mono audio in, SSL features (HuBERT) out.

WAV16K FP32 [N] -> SSL FP32 [768, T], T = (N - 400) // 320 + 1 frames at 50 Hz (the graph
normalizes the waveform itself when the exported model asked for it). Used for zero-shot
references; one request is one clip, answered on its own.

Errors: a bad request (wrong rank, shorter than one frame, longer than MAX_SECONDS, NaN or
infinite samples) gets ``TritonError.INVALID_ARG`` with a one-line message; a failure inside
the graph gets ``INTERNAL`` (the traceback goes to the server log only).
"""
from __future__ import annotations

import logging

import numpy as np
import triton_python_backend_utils as pb_utils

from python_backend.errors import RequestError
from python_backend.onnx_stage import OnnxStage
from python_backend.triton_common import ensure_logging, error_response, version_dir

MODEL_TYPE = "gpt-sovits-ssl"
SAMPLE_RATE = 16000
MIN_SAMPLES = 400  # HuBERT's convolutional front end: one frame needs 25 ms
MAX_SECONDS = 60  # attention memory grows with the square of the length; references are 3-10 s
log = logging.getLogger("gsv_triton.ssl")


def check_wav(wav: np.ndarray | None, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """WAV16K as the graph's [1, N] float32, or RequestError naming what is wrong."""
    if wav is None:
        raise RequestError("WAV16K missing")
    if wav.ndim != 1:
        raise RequestError(f"WAV16K must have shape [N] (mono), got {list(wav.shape)}")
    limit = MAX_SECONDS * sample_rate
    if not MIN_SAMPLES <= wav.shape[0] <= limit:
        raise RequestError(f"WAV16K has {wav.shape[0]} samples; {MIN_SAMPLES} to {limit} allowed "
                           f"({MAX_SECONDS} s at {sample_rate} Hz)")
    if not np.isfinite(wav).all():
        raise RequestError("WAV16K contains NaN or infinite samples")
    return wav.astype(np.float32, copy=False)[None, :]


class TritonPythonModel:
    def initialize(self, args):
        ensure_logging()
        folder = version_dir(args)
        self.stage = OnnxStage(folder / "ssl.onnx", MODEL_TYPE, inputs=("wav16k",), outputs=("ssl",))
        self.sample_rate = int(self.stage.metadata.get("sample_rate", SAMPLE_RATE))
        if self.sample_rate != SAMPLE_RATE:
            raise RuntimeError(f"{folder}: ssl.onnx expects {self.sample_rate} Hz, WAV16K is {SAMPLE_RATE} Hz")
        log.info("[ssl] loaded %s (dim %s, normalize %s)", folder, self.stage.metadata.get("dim"),
                 self.stage.metadata.get("normalize"))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                tensor = pb_utils.get_input_tensor_by_name(request, "WAV16K")
                wav = check_wav(None if tensor is None else tensor.as_numpy(), self.sample_rate)
                ssl = self.stage.run(wav16k=wav)["ssl"][0].astype(np.float32, copy=False)
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("SSL", ssl)]))
            except RequestError as exc:
                responses.append(error_response(f"gsv_ssl: {exc}", pb_utils.TritonError.INVALID_ARG))
            except Exception as exc:  # never raise out of the batch: the other requests still get answers
                log.exception("[ssl] inference failed")
                responses.append(error_response(f"gsv_ssl: inference failed ({type(exc).__name__})",
                                                pb_utils.TritonError.INTERNAL))
        return responses

    def finalize(self):
        log.info("[ssl] unloading")
        self.stage = None

"""Triton Python model ``gsv_sv``: 32 kHz mono audio in, the v2Pro/v2ProPlus speaker embedding out.

WAV32K FP32 [N] -> SV_EMB FP32 [1, 20480]: resampled to 16 kHz, 80-bin fbank (numpy), then
ERes2NetV2 (``sv.onnx``) through ``SVEmbedder``. Used for zero-shot references of v2Pro/v2ProPlus
voices; one request is one clip, answered on its own.

Errors: a bad request (wrong rank, shorter than one fbank frame, longer than MAX_SECONDS, NaN or
infinite samples) gets ``TritonError.INVALID_ARG`` with a one-line message; a failure inside the
graph gets ``INTERNAL`` (the traceback goes to the server log only). The load embeds one second
of noise first, so a graph that cannot run fails the load, not the first request.
"""
from __future__ import annotations

import logging

import numpy as np
import triton_python_backend_utils as pb_utils

from python_backend.errors import RequestError
from python_backend.speaker_verification import SV_EMB_DIM, SVEmbedder
from python_backend.triton_common import ensure_logging, error_response, version_dir

log = logging.getLogger("gsv_triton.sv")


class TritonPythonModel:
    def initialize(self, args):
        ensure_logging()
        folder = version_dir(args)
        self.embedder = SVEmbedder(folder / "sv.onnx")
        probe = self.embedder.embed(np.random.default_rng(0).standard_normal(32000).astype(np.float32) * 0.1)
        if probe.shape != (1, SV_EMB_DIM) or not np.isfinite(probe).all():
            raise RuntimeError(f"{folder}: sv.onnx gave {list(probe.shape)} (finite: {bool(np.isfinite(probe).all())}) "
                               f"for a 1 s probe, expected finite [1, {SV_EMB_DIM}]")
        log.info("[sv] loaded %s (%s)", folder, self.embedder.stage.metadata.get("architecture"))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                tensor = pb_utils.get_input_tensor_by_name(request, "WAV32K")
                emb = self.embedder.embed(None if tensor is None else tensor.as_numpy())
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("SV_EMB", emb)]))
            except RequestError as exc:
                responses.append(error_response(f"gsv_sv: {exc}", pb_utils.TritonError.INVALID_ARG))
            except Exception as exc:  # never raise out of the batch: the other requests still get answers
                log.exception("[sv] inference failed")
                responses.append(error_response(f"gsv_sv: inference failed ({type(exc).__name__})",
                                                pb_utils.TritonError.INTERNAL))
        return responses

    def finalize(self):
        log.info("[sv] unloading")
        self.embedder = None

"""Triton Python model ``gsv_bert``: one sentence in, BERT features out.

Either TEXT BYTES [1] (normalized Chinese text; tokenized here with the vocab.txt beside
bert.onnx) -> HIDDEN FP32 [N_chars, 1024], one row per character ([CLS]/[SEP] dropped), or
INPUT_IDS INT64 [N] (CLS ... SEP) -> HIDDEN FP32 [N, 1024]: the third-from-last hidden layer
GPT-SoVITS uses. One request is one sentence
(no padding); a batch of requests is answered one by one, each with its own result or error.

Errors: a bad request (empty, too long, wrong rank, an id outside the vocabulary) gets
``TritonError.INVALID_ARG`` with a one-line message (gRPC INVALID_ARGUMENT, HTTP 400); a failure
inside the graph gets ``INTERNAL`` (the traceback goes to the server log, not to the client).
Triton itself refuses a wrong dtype before the request reaches ``execute``.
"""
from __future__ import annotations

import logging

import numpy as np
import triton_python_backend_utils as pb_utils

from python_backend.errors import RequestError
from python_backend.onnx_stage import OnnxStage
from python_backend.triton_common import ensure_logging, error_response, version_dir
from python_backend.text.frontend import CharTokenizer

MODEL_TYPE = "gpt-sovits-bert"
DEFAULT_MAX_TOKENS = 512  # BERT's max_position_embeddings (chinese-roberta-wwm-ext-large)
log = logging.getLogger("gsv_triton.bert")


def check_ids(ids: np.ndarray | None, vocab_size: int, max_tokens: int) -> np.ndarray:
    """INPUT_IDS as the graph's [1, N] int64, or RequestError naming what is wrong."""
    if ids is None:
        raise RequestError("INPUT_IDS missing")
    if ids.ndim != 1:
        raise RequestError(f"INPUT_IDS must have shape [N], got {list(ids.shape)}")
    if not 1 <= ids.shape[0] <= max_tokens:
        raise RequestError(f"INPUT_IDS has {ids.shape[0]} ids; 1 to {max_tokens} allowed")
    bad = (ids < 0) | (ids >= vocab_size)
    if bad.any():
        pos = int(np.argmax(bad))
        raise RequestError(f"INPUT_IDS[{pos}] = {int(ids[pos])} is outside the vocabulary (0 to {vocab_size - 1})")
    return ids.astype(np.int64, copy=False)[None, :]


class TritonPythonModel:
    def initialize(self, args):
        ensure_logging()
        folder = version_dir(args)
        self.stage = OnnxStage(folder / "bert.onnx", MODEL_TYPE, inputs=("input_ids",), outputs=("hidden",))
        meta = self.stage.metadata
        vocab_file = folder / "vocab.txt"
        vocab_lines = sum(1 for _ in vocab_file.open(encoding="utf-8")) if vocab_file.is_file() else None
        self.vocab_size = int(meta.get("vocab_size") or vocab_lines or 0)
        if self.vocab_size <= 0:
            raise RuntimeError(f"{folder}: bert.onnx has no vocab_size metadata and no vocab.txt beside it")
        if vocab_lines is None:
            log.warning("[bert] %s: vocab.txt missing (callers need it to tokenize)", folder)
        elif vocab_lines != self.vocab_size:
            log.warning("[bert] %s: vocab.txt has %d entries, the graph %d", folder, vocab_lines, self.vocab_size)
        self.tokenizer = CharTokenizer.from_vocab_file(vocab_file) if vocab_lines else None
        self.max_tokens = int(meta.get("max_positions") or DEFAULT_MAX_TOKENS)
        self.dim = int(meta.get("dim", 1024))
        log.info("[bert] loaded %s (vocab %d, dim %d, up to %d ids)", folder, self.vocab_size, self.dim, self.max_tokens)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                text = pb_utils.get_input_tensor_by_name(request, "TEXT")
                if text is not None:
                    ids = self._tokenize(text.as_numpy())
                else:
                    tensor = pb_utils.get_input_tensor_by_name(request, "INPUT_IDS")
                    ids = check_ids(None if tensor is None else tensor.as_numpy(), self.vocab_size, self.max_tokens)
                hidden = self.stage.run(input_ids=ids)["hidden"][0].astype(np.float32, copy=False)
                if text is not None:
                    hidden = hidden[1:-1]  # one row per character
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("HIDDEN", hidden)]))
            except RequestError as exc:
                responses.append(error_response(f"gsv_bert: {exc}", pb_utils.TritonError.INVALID_ARG))
            except Exception as exc:  # never raise out of the batch: the other requests still get answers
                log.exception("[bert] inference failed")
                responses.append(error_response(f"gsv_bert: inference failed ({type(exc).__name__})",
                                                pb_utils.TritonError.INTERNAL))
        return responses

    def _tokenize(self, raw: np.ndarray) -> np.ndarray:
        if self.tokenizer is None:
            raise RequestError("TEXT needs vocab.txt beside bert.onnx; send INPUT_IDS instead")
        item = np.asarray(raw, dtype=object).reshape(-1)
        if item.size != 1:
            raise RequestError(f"TEXT must hold one element, got {item.size}")
        try:
            text = item[0].decode("utf-8") if isinstance(item[0], bytes) else str(item[0])
        except UnicodeDecodeError:
            raise RequestError("TEXT is not valid UTF-8") from None
        if not text:
            raise RequestError("TEXT is empty")
        return check_ids(self.tokenizer.encode(text).reshape(-1), self.vocab_size, self.max_tokens)

    def finalize(self):
        log.info("[bert] unloading")
        self.stage = None

"""Triton adapters of the ``tts`` and ``tts_stream`` BLS models (thin: logic in tts_pipeline).

Concurrency is safe on Triton 2.51 by construction: in one stub process at most one thread is
inside a call into Triton at a time (``triton_common.STUB_IPC``), and ``tts`` never has two
threads that call into Triton at all.

``tts`` (whole utterance): each instance (``instance_group`` count in ``model_repository/tts``,
one stub process each) serves ONE request at a time inside ``execute``, in Triton's thread for
the instance, and checks cancellation there after each voice response (sentences, and the
heartbeats the voice sends about every half second for it); N instances put N requests
into the voice engine together, and Triton's queue (``max_queue_size``, rejecting beyond it
with UNAVAILABLE) bounds the rest. A BLS exec into the decoupled voice returns only with its
first response (a whole sentence here) and holds the stub's lock meanwhile, but that lock is
the instance's own, so other requests run in the other instances.

``tts_stream`` (chunks): ``execute`` hands each request to a worker thread and returns at
once; at most ``GSV_MAX_IN_FLIGHT`` requests are in progress (more answer UNAVAILABLE). Its
first voice response is a short first chunk, so its exec holds the lock only that long. A
watcher thread polls its requests for Triton's cancellation (a gRPC client that timed out or
went away) while they wait for a chunk.

Both: the text's sentences are checked against the work limits (``python_backend.limits``)
before any BLS call, and a cancelled request's voice request is dropped (CANCEL) so its
decode slots free up.
"""
from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

from python_backend import reference as reference_mod
from python_backend import tts_pipeline
from python_backend.layout import BERT_MODEL, SSL_MODEL
from python_backend.limits import BUSY, Limits
from python_backend.model_config import TTS_INPUTS
from python_backend.routing import CURRENT, RoutingTable

from python_backend.text import frontend
from python_backend.triton_common import HEARTBEAT_PARAMETER, CacheMetrics, bls_exec, cache_from_env, ensure_logging, is_cancelled, model_ready, send
from python_backend.tts_request import INVALID_ARG, NOT_FOUND, RequestError, parse

LOG = logging.getLogger("gsv.tts")
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
WORKERS = 64


class VoiceError(RuntimeError):
    def __init__(self, message: str, code):
        super().__init__(message)
        self.code = code


def _inputs(request) -> dict[str, np.ndarray | None]:
    out = {}
    for spec in TTS_INPUTS:
        tensor = pb_utils.get_input_tensor_by_name(request, spec.name)
        out[spec.name] = None if tensor is None else tensor.as_numpy()
    return out


def _bert(text: str) -> np.ndarray:
    req = pb_utils.InferenceRequest(model_name=BERT_MODEL, requested_output_names=["HIDDEN"],
                                    inputs=[pb_utils.Tensor("TEXT", np.array([text.encode()], dtype=object))])
    resp = bls_exec(req)
    if resp.has_error():
        raise VoiceError(f"BERT failed: {resp.error().message()}", pb_utils.TritonError.INTERNAL)
    return pb_utils.get_output_tensor_by_name(resp, "HIDDEN").as_numpy()


def _ssl(wav16k: np.ndarray) -> np.ndarray:
    req = pb_utils.InferenceRequest(model_name=SSL_MODEL, requested_output_names=["SSL"],
                                    inputs=[pb_utils.Tensor("WAV16K", wav16k.astype(np.float32))])
    resp = bls_exec(req)
    if resp.has_error():
        raise VoiceError(f"SSL failed: {resp.error().message()}", pb_utils.TritonError.INTERNAL)
    return pb_utils.get_output_tensor_by_name(resp, "SSL").as_numpy()


def _chunk(resp) -> tts_pipeline.VoiceChunk | None:
    audio = pb_utils.get_output_tensor_by_name(resp, "AUDIO")
    if audio is None:
        return None
    reason = pb_utils.get_output_tensor_by_name(resp, "FINISH_REASON").as_numpy().reshape(-1)[0]
    return tts_pipeline.VoiceChunk(
        audio=audio.as_numpy().astype(np.float32),
        version=int(pb_utils.get_output_tensor_by_name(resp, "VOICE_VERSION").as_numpy().reshape(-1)[0]),
        sample_rate=int(pb_utils.get_output_tensor_by_name(resp, "SAMPLE_RATE").as_numpy().reshape(-1)[0]),
        finish_reason=reason.decode() if isinstance(reason, bytes) else str(reason),
    )


ROUTING = RoutingTable.from_env()  # canary routing of the user's repository (GSV_REPO); none without it


def _version(model: str, pinned: int | None = None) -> int:
    """The version one request runs on: the pinned one (VOICE_VERSION) when given and ready; else
    a canary share to the candidate, the rest to the active version, each named explicitly; -1
    (the current version) for voices without a canary. A routed version that is not ready (a
    replica still loading it) yields to the other one."""
    if pinned is not None:
        if not model_ready(model, pinned):
            raise RequestError(f"voice {model.removeprefix('voice_')!r} has no version {pinned} loaded", NOT_FOUND)
        return pinned
    chosen, other = ROUTING.choose(model.removeprefix("voice_"))
    error = ROUTING.pop_error()
    if error:
        LOG.warning("[tts] routing.json ignored until it changes: %s", error)
    for version in (chosen, other):
        if version is not None and version != CURRENT and model_ready(model, version):
            return version
    return CURRENT


def _instance_index(args: dict) -> int:
    """The index of this instance in its group ("tts_0_2" -> 2; 0 when Triton does not say)."""
    tail = str(args.get("model_instance_name", "")).rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class _Watch:
    """A request in progress, for the cancellation watcher: where its voice request runs."""

    def __init__(self, request, model: str, rid: str):
        self.request, self.model, self.rid = request, model, rid
        self.version = CURRENT  # the routed version, then the one that answered
        self.cancelled = False
        self.cancel_sent_at = 0.0
        # is_cancelled() on a request whose final response went out segfaults tritonserver 2.51
        # (TRITONBACKEND_ResponseFactoryIsCancelled on a freed factory): the watcher asks only
        # under this lock and only while ``done`` is False; the worker sets it before its final.
        self.lock = threading.Lock()
        self.done = False


def _voice(model: str, inputs: dict[str, np.ndarray], pinned: int | None = None, watch: _Watch | None = None,
           heartbeat: bool = False):
    """The voice's chunks (``heartbeat``: with an empty one about every half second as well)."""
    if not model_ready(model):
        raise RequestError(f"voice {model.removeprefix('voice_')!r} is not loaded", NOT_FOUND)
    version = _version(model, pinned)
    if watch is not None:
        watch.version = version
    req = pb_utils.InferenceRequest(
        model_name=model, model_version=version,
        requested_output_names=["AUDIO", "SAMPLE_RATE", "VOICE_VERSION", "FINISH_REASON"],
        inputs=[pb_utils.Tensor(name, value) for name, value in inputs.items()],
        parameters={HEARTBEAT_PARAMETER: True} if heartbeat else {})
    for resp in bls_exec(req, decoupled=True):
        if resp.has_error():
            err = resp.error()
            code = err.code() if hasattr(err, "code") else pb_utils.TritonError.INTERNAL
            if BUSY in err.message():  # 2.51's BLS hands the voice's UNAVAILABLE back as INTERNAL
                code = pb_utils.TritonError.UNAVAILABLE
            raise VoiceError(err.message(), code)
        chunk = _chunk(resp)
        if chunk is not None:
            if watch is not None:
                watch.version = chunk.version
            yield chunk


def _pinned_voice(req, watch: _Watch | None = None, heartbeat: bool = False):
    return lambda model, inputs: _voice(model, inputs, req.voice_version, watch, heartbeat)


def _cancel(model: str, version: int, request_id: str) -> None:
    """Tell the voice model to drop a request whose client went away (frees its decode slot)."""
    req = pb_utils.InferenceRequest(
        model_name=model, model_version=version, requested_output_names=["AUDIO"],
        inputs=[pb_utils.Tensor("PHONES", np.zeros(1, np.int64)), pb_utils.Tensor("BERT", np.zeros((1024, 1), np.float32)),
                pb_utils.Tensor("CANCEL", np.array([request_id.encode()], dtype=object))])
    for _ in bls_exec(req, decoupled=True):
        pass


def _error(exc: Exception):
    if isinstance(exc, RequestError):
        codes = {INVALID_ARG: pb_utils.TritonError.INVALID_ARG, NOT_FOUND: pb_utils.TritonError.NOT_FOUND}
        return pb_utils.TritonError(str(exc), codes.get(exc.code, pb_utils.TritonError.INVALID_ARG))
    if isinstance(exc, VoiceError):
        return pb_utils.TritonError(str(exc), exc.code)
    LOG.exception("[tts] synthesis failed")
    return pb_utils.TritonError(f"synthesis failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}",
                                pb_utils.TritonError.INTERNAL)


def _outputs(audio: np.ndarray, sample_rate: int, version: int, reason: str, final: bool | None = None):
    tensors = [pb_utils.Tensor("AUDIO", audio.astype(np.float32)),
               pb_utils.Tensor("SAMPLE_RATE", np.array([sample_rate], np.int32)),
               pb_utils.Tensor("VOICE_VERSION", np.array([version], np.int32)),
               pb_utils.Tensor("FINISH_REASON", np.array([reason.encode()], dtype=object))]
    if final is not None:
        tensors.append(pb_utils.Tensor("IS_FINAL", np.array([final])))
    return pb_utils.InferenceResponse(output_tensors=tensors)


class _BLS:
    stream = False

    def initialize(self, args):
        ensure_logging()
        repo = os.environ.get("GSV_REPO")   # the repository's G2PW and upstream dictionaries
        status = frontend.configure_from_repo(repo) if repo else frontend.configure()
        LOG.info("[tts] text front end: g2pw=%s parity=%s", status["g2pw"], status["parity"])
        # Chinese and English load at start (about 7 s); ja/ko/yue on first use unless listed here
        langs = tuple(x for x in os.environ.get("GSV_TEXT_WARMUP", "zh").split(",") if x in frontend.WARMUP_TEXTS)
        self.warm = threading.Event()
        if self.stream or _instance_index(args) == 0:
            frontend.warmup(langs or ("zh",))  # the model is ready when its first instance can serve
            self.warm.set()
        else:  # further tts instances warm up after the load (N warm-ups at once made loads N times slower)
            threading.Thread(target=self._warm_up, args=(langs or ("zh",),), name="tts-warmup", daemon=True).start()
        self.pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="tts") if self.stream else None
        self.ref_cache = cache_from_env()
        self.cache_metrics = CacheMetrics(args["model_name"])
        self.limits = Limits.from_env()
        self.lock = threading.Lock()
        self.in_flight = 0
        self.watched: dict[str, _Watch] = {}
        self.stopping = threading.Event()
        self.watcher = None
        if self.stream:  # tts checks cancellation itself, in execute's thread (TTSModel)
            self.watcher = threading.Thread(target=self._watch_loop, name="tts-cancel", daemon=True)
            self.watcher.start()

    def execute(self, requests):
        """Hand each request to a worker thread; at most ``max_in_flight`` in progress."""
        for request in requests:
            sender = request.get_response_sender()
            with self.lock:
                busy = self.in_flight >= self.limits.max_in_flight
                if not busy:
                    self.in_flight += 1
            if busy:
                send(sender, pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    f"the server is busy ({self.limits.max_in_flight} requests in progress, "
                    f"{Limits.ENV['max_in_flight']}); retry later", pb_utils.TritonError.UNAVAILABLE)), flags=FINAL)
                continue
            inputs = _inputs(request)
            self.pool.submit(self._serve_guarded, request, sender, inputs)
        return None

    def _warm_up(self, langs: tuple[str, ...]) -> None:
        """Load the text front end in the background (pure Python: no call into Triton)."""
        try:
            frontend.warmup(langs)
        except Exception as exc:  # noqa: BLE001 - requests then load what they need themselves
            LOG.warning("[tts] text front end warm-up failed: %s", exc)
        finally:
            self.warm.set()

    # ---- cancellation: a client that is gone frees its voice slots -----------------------
    def _watch(self, request, model: str) -> _Watch:
        import uuid

        watch = _Watch(request, model, uuid.uuid4().hex)
        with self.lock:
            self.watched[watch.rid] = watch
        return watch

    def _unwatch(self, watch: _Watch) -> None:
        with watch.lock:
            watch.done = True
        with self.lock:
            self.watched.pop(watch.rid, None)

    def _watch_loop(self, every: float = 0.5, resend: float = 2.0) -> None:
        import time

        while not self.stopping.wait(every):
            with self.lock:
                watches = list(self.watched.values())
            for watch in watches:
                try:
                    if not watch.cancelled:
                        with watch.lock:
                            if watch.done or not is_cancelled(watch.request):
                                continue
                    now = time.monotonic()
                    if not watch.cancelled:
                        LOG.info("[tts] request %s cancelled by the client; telling %s to drop it", watch.rid, watch.model)
                    watch.cancelled = True
                    # sent again while the request runs: the first CANCEL can reach the voice before its request
                    if now - watch.cancel_sent_at >= resend:
                        watch.cancel_sent_at = now
                        _cancel(watch.model, watch.version, watch.rid)
                except Exception as exc:  # noqa: BLE001 - the watcher must outlive any one request
                    LOG.warning("[tts] cancellation check of %s failed: %s", watch.rid, exc)

    def _serve_guarded(self, request, sender, inputs, counted: bool = True):
        try:
            self._serve(request, sender, inputs)
        except Exception as exc:  # exactly one final response per request, errors included
            send(sender, pb_utils.InferenceResponse(error=_error(exc)), flags=FINAL)
        finally:
            if counted:
                with self.lock:
                    self.in_flight -= 1

    def _max_tokens(self, inputs) -> int | None:
        raw = inputs.get("MAX_TOKENS")
        if raw is None:
            return None
        value = int(np.asarray(raw).reshape(-1)[0])
        if not 1 <= value <= 1500:
            raise RequestError(f"MAX_TOKENS {value} out of range [1, 1500]")
        return value

    def _reference(self, req) -> dict[str, np.ndarray]:
        """The REF_* tensors of the request's reference clip, from the cache or computed now."""
        ref = req.reference

        def compute():
            return reference_mod.prepare(
                ref, lambda text, lang: frontend.reference_phones(text, lang), _ssl,
                lambda seq: frontend.bert_features(seq, _bert))

        try:
            value, hit, evicted = self.ref_cache.get_or_compute(ref.key, compute)
        except frontend.TextError as exc:
            raise RequestError(f"REF_TEXT: {exc}") from None
        self.cache_metrics.count("hit" if hit else "miss")
        self.cache_metrics.count("eviction", evicted)
        return value

    def finalize(self):
        if self.pool is not None:
            self.pool.shutdown(wait=True)  # drain: in-flight requests finish before the model goes
        self.stopping.set()
        if self.watcher is not None:
            self.watcher.join(5)


class TTSModel(_BLS):
    """``tts``: the whole utterance in one response; one request at a time per instance.

    Exactly one thread of this stub calls into Triton: Triton's thread for this instance, which
    runs ``execute``. No worker threads and no watcher: the voice sends a heartbeat (an empty
    response) about every half second besides its sentences, and cancellation is checked here
    after each response, so a client that went away is noticed within about half a second."""

    def execute(self, requests):
        """Serve each request here: the instance is busy (Triton gives the next request to
        another instance, or queues it) until it answered."""
        self.warm.wait()  # a request given to an instance still warming up waits for it
        for request in requests:
            self._serve_guarded(request, request.get_response_sender(), _inputs(request), counted=False)
        return None

    def _serve(self, request, sender, inputs):
        import uuid

        req = parse(inputs, self.limits)
        model, rid = f"voice_{req.voice}", uuid.uuid4().hex
        chunks = tts_pipeline.synthesize(req, _bert, _pinned_voice(req, heartbeat=True), stream=False,
                                         max_tokens=self._max_tokens(inputs), request_id=rid,
                                         reference=self._reference)
        utt = tts_pipeline.Utterance()
        for chunk in chunks:  # sentences and heartbeats
            if is_cancelled(request):  # the client went away: the voice drops the rest
                LOG.info("[tts] request %s cancelled by the client; telling %s to drop it", rid, model)
                _cancel(model, chunk.version, rid)
                send(sender, pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    "cancelled by the client", pb_utils.TritonError.CANCELLED)), flags=FINAL)
                return
            utt.add(chunk)
        send(sender, _outputs(utt.joined(), utt.sample_rate, utt.version, ",".join(utt.finish_reasons)), flags=FINAL)


class TTSStreamModel(_BLS):
    """``tts_stream``: audio chunks as they are ready; the last response has IS_FINAL true."""

    stream = True

    def _serve(self, request, sender, inputs):
        req = parse(inputs, self.limits)
        watch = self._watch(request, f"voice_{req.voice}")
        try:
            final = self._stream(request, sender, inputs, req, watch)
        finally:
            self._unwatch(watch)  # before the final response: the watcher must not touch a finished request
        send(sender, final, flags=FINAL)

    def _stream(self, request, sender, inputs, req, watch: _Watch):
        """Send the audio chunks; return the closing response (None: flags only, after a cancel)."""
        rid = watch.rid
        chunks = tts_pipeline.synthesize(req, _bert, _pinned_voice(req, watch), stream=True,
                                         max_tokens=self._max_tokens(inputs), request_id=rid, reference=self._reference)
        version, rate, reasons = -1, 0, []
        for chunk in chunks:
            if watch.cancelled or is_cancelled(request):
                if not watch.cancelled:
                    watch.cancelled = True
                    _cancel(f"voice_{req.voice}", chunk.version, rid)
                LOG.info("[tts] stream %s cancelled by the client; voice slot released", rid)
                return None
            version, rate = chunk.version, chunk.sample_rate
            if chunk.finish_reason:
                reasons.append(chunk.finish_reason)
            if chunk.audio.size:
                send(sender, _outputs(chunk.audio, rate, version, chunk.finish_reason, final=False))
        if watch.cancelled:
            return None
        # the closing response carries no audio: every chunk went out the moment it was ready
        return _outputs(np.zeros(0, np.float32), rate, version, ",".join(reasons), final=True)


TritonPythonModel = TTSModel

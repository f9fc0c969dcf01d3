"""Triton adapter of a voice version (``voice_<NAME>/<N>/model.py`` imports this).

Thin: tensors in -> ``SynthesisRequest`` per sentence -> ``VoiceEngine``; chunks out through
the request's response sender. Responses (decoupled): the audio chunks; the last one carries
the FINAL flag.

Load = validation (``python_backend.validation``): a version that cannot load or fails the
checks raises from ``initialize``, so Triton fails the load with the reason and the previous
version keeps serving; when the failure is the version's fault (not e.g. memory) its folder is
moved to ``REPO/.gsv/quarantine/`` so no later load or restart picks it again. History:
``validated`` + ``active`` on success, ``failed`` (+ ``quarantined``) on failure, ``released``
when Triton unloads the version after its in-flight requests finished.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from python_backend import history, layout, mel_v4, validation
from python_backend.triton_common import HEARTBEAT_PARAMETER, STUB_IPC, CacheMetrics, bls_exec, cache_from_env, ensure_logging, is_cancelled, send
from python_backend.validation import ValidationError  # noqa: F401  (re-exported)
from python_backend import reference as reference_mod
from python_backend.limits import Limits
from python_backend.voice_engine import EngineBusy, EngineReference, RequestError, RequestGroup, VoiceEngine
from python_backend.voice_request import Outgoing, Utterance, sentence_requests, split_sentences

LOG = logging.getLogger("gsv.voice")

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
PARAMS = {"TOP_K": ("top_k", int), "TOP_P": ("top_p", float), "TEMPERATURE": ("temperature", float),
          "REPETITION_PENALTY": ("repetition_penalty", float), "NOISE_SCALE": ("noise_scale", float),
          "SPEED": ("speed", float), "MAX_TOKENS": ("max_tokens", int), "STREAM": ("stream", bool),
          "SAMPLE_STEPS": ("sample_steps", int)}


def _value(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _wants_heartbeat(request) -> bool:
    """The request parameter ``gsv_heartbeat`` (a BLS caller's, not a tensor: old configs serve it)."""
    try:
        return bool(json.loads(request.parameters() or "{}").get(HEARTBEAT_PARAMETER))
    except (ValueError, AttributeError):
        return False


def _text(value) -> str:
    item = np.asarray(value, dtype=object).reshape(-1)[0]
    return item.decode() if isinstance(item, bytes) else str(item)


def _sv_embedding(wav32k: np.ndarray) -> np.ndarray:
    """The shared speaker-verification model (``gsv_sv``) on one 32 kHz clip: [20480]."""
    req = pb_utils.InferenceRequest(model_name=layout.SV_MODEL, requested_output_names=["SV_EMB"],
                                    inputs=[pb_utils.Tensor("WAV32K", np.asarray(wav32k, np.float32))])
    resp = bls_exec(req)
    if resp.has_error():
        raise RequestError(f"speaker verification failed: {resp.error().message()}")
    return pb_utils.get_output_tensor_by_name(resp, "SV_EMB").as_numpy().reshape(-1)


def _record(repo: Path, voice: str, version: int, event: str, reason: str = "") -> None:
    try:
        history.append(repo, history.Event(voice, version, event, reason=reason))
    except OSError as exc:  # a full or read-only repository must not fail a load or an unload
        LOG.warning("[voice] cannot record %s for %s version %d: %s", event, voice, version, exc)


class TritonPythonModel:
    def initialize(self, args):
        ensure_logging()
        self.name = args["model_name"]
        self.version = int(args["model_version"])
        folder = Path(args["model_repository"]) / args["model_version"]
        self.repo = folder.parent.parent
        self.voice = self.name[len("voice_"):] if self.name.startswith("voice_") else self.name
        engine = None
        try:
            validation.preflight(folder)  # manifest readable, graph files whole (hashes), before onnxruntime opens them
            # benchmark switch (bench/): every request runs to its token budget, EOS never ends it
            ignore_eos = os.environ.get("GSV_BENCH_IGNORE_EOS", "") == "1"
            if ignore_eos:
                LOG.warning("[voice] %s version %d: GSV_BENCH_IGNORE_EOS=1 -> BENCHMARK MODE, EOS is ignored and "
                            "every sentence runs to its token budget (never use this in production)",
                            self.name, self.version)
            self.limits = Limits.from_env()
            engine = VoiceEngine(folder, ignore_eos=ignore_eos, max_queued=self.limits.max_queued_sentences)
            metrics = validation.validate(engine, verify_hashes=False)
        except Exception as exc:
            if engine is not None:
                engine.close(timeout=5)
            self._refuse(folder, exc)
            raise
        self.engine = engine
        self.sample_rate = int(engine.sample_rate)
        self.lock = threading.Lock()
        self.active: dict[str, Utterance] = {}
        engine.on_tick = self._heartbeat
        # every custom-metric call goes through this lock: calls from two stub threads at once
        # (execute and the engine's sender) crashed tritonserver 2.51 (SIGSEGV in libtriton_python)
        # when another version of the model was loading - 2 of 2 stress runs at the first load;
        # serialized: 0 crashes in 16 loads under 4 client threads
        self.metric_lock = STUB_IPC
        self._metrics()
        self.ref_cache = cache_from_env()
        self.cache_metrics = CacheMetrics(self.name)
        _record(self.repo, self.voice, self.version, "validated",
                ", ".join(f"{k}={v:.3g}" for k, v in metrics.items()))
        _record(self.repo, self.voice, self.version, "active", self._rate_note())
        LOG.info("[voice] %s version %d loaded and validated (%s)", self.name, self.version,
                 ", ".join(f"{k}={v:.3g}" for k, v in metrics.items()))

    def _rate_note(self) -> str:
        """The version's kind and rate for its "active" event, saying so when the rate differs
        from the version that was active before (a v2 -> v4 swap goes 32000 -> 48000 Hz)."""
        note = f"{self.engine.manifest.sovits_version}, {self.sample_rate} Hz"
        try:
            before = [e.version for e in history.read(self.repo, self.voice)
                      if e.event == "active" and e.version != self.version]
            if before:
                from python_backend.manifest import VoiceManifest

                old = VoiceManifest.read(Path(self.repo) / layout.voice_model(self.voice) / str(before[-1]))
                if int(old.sample_rate) != self.sample_rate:
                    note += (f"; sample rate changes from {int(old.sample_rate)} Hz (version {before[-1]}, "
                             f"{old.sovits_version})")
        except Exception:  # noqa: BLE001 - a note, never a reason to fail a load
            pass
        return note

    def _refuse(self, folder: Path, exc: Exception) -> None:
        """Record why the load failed; quarantine the folder when the version is at fault."""
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if not validation.is_version_fault(exc):
            LOG.error("[voice] %s version %d failed to load (not quarantined: host fault): %s", self.name,
                      self.version, reason)
            _record(self.repo, self.voice, self.version, "failed", f"{type(exc).__name__}: {reason} (not quarantined)")
            return
        try:
            target = validation.quarantine(folder, reason)
            LOG.error("[voice] %s version %d refused, quarantined to %s: %s", self.name, self.version, target, reason)
        except OSError as move_exc:
            LOG.error("[voice] %s version %d refused (%s); quarantine failed: %s", self.name, self.version, reason,
                      move_exc)

    def _metrics(self) -> None:
        """Triton counts a Python model's error responses as successes, so count outcomes here."""
        labels = {"model": self.name, "version": str(self.version)}
        # the families must outlive their metrics, so they are kept on the model
        self.in_flight_family = pb_utils.MetricFamily(
            name="gsv_voice_in_flight", description="requests being synthesized by a voice version",
            kind=pb_utils.MetricFamily.GAUGE)
        self.in_flight = self.in_flight_family.Metric(labels=labels)
        self.finished = pb_utils.MetricFamily(
            name="gsv_voice_requests_total", description="sentences finished by a voice version, by finish reason",
            kind=pb_utils.MetricFamily.COUNTER)
        self.finished_by_reason = {}
        self.labels = labels

    def _count(self, reasons: str) -> None:
        for reason in filter(None, reasons.split(",")):
            metric = self.finished_by_reason.get(reason)
            if metric is None:
                metric = self.finished_by_reason[reason] = self.finished.Metric(labels={**self.labels, "reason": reason})
            metric.increment(1)

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                self._start(request, sender)
            except RequestError as exc:
                send(sender, pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)),
                     flags=FINAL)
            except EngineBusy as exc:
                send(sender, pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    f"voice {self.voice}: {exc}", pb_utils.TritonError.UNAVAILABLE)), flags=FINAL)
            except Exception as exc:  # never raise out of the batch loop: one bad request fails alone
                LOG.exception("[voice] request failed")
                send(sender, pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    f"voice request failed: {type(exc).__name__}", pb_utils.TritonError.INTERNAL)), flags=FINAL)
        return None

    def _start(self, request, sender) -> None:
        cancel = _value(request, "CANCEL")
        if cancel is not None:
            with self.lock:
                target = self.active.get(_text(cancel))
            if target is not None:
                target.cancel()
            send(sender, flags=FINAL)
            return
        counts = _value(request, "SENTENCE_PHONES")
        if counts is not None and np.asarray(counts).size > self.limits.max_sentences:  # before slicing anything
            raise RequestError(self.limits.check_sentences([1] * int(np.asarray(counts).size)))
        parts = split_sentences(_value(request, "PHONES"), _value(request, "BERT"), counts)
        problem = self.limits.check_sentences([p.size for p, _ in parts])
        if problem:
            raise RequestError(problem)
        params = {}
        for name, (field, kind) in PARAMS.items():
            raw = _value(request, name)
            if raw is not None:
                params[field] = kind(np.asarray(raw).reshape(-1)[0])
        seed_raw = _value(request, "SEED")
        seed = None if seed_raw is None else int(np.asarray(seed_raw).reshape(-1)[0])
        if seed is not None and seed < 0:
            raise RequestError(f"SEED {seed} must be a non-negative integer")
        engine_requests = sentence_requests(parts, params, seed)
        reference = self._reference(request)
        for req in engine_requests:
            req.reference = reference
            req.validate(self.engine.gpt.phone_vocab_size)  # all sentences checked before any work starts
        rid_raw = _value(request, "REQUEST_ID")
        rid = _text(rid_raw) if rid_raw is not None else None
        utterance = Utterance(len(engine_requests), self.sample_rate, send=None)
        utterance.send = lambda out: self._send(sender, request, utterance, rid, out)
        utterance.wants_heartbeat = _wants_heartbeat(request)
        if rid:
            with self.lock:
                self.active[rid] = utterance
        with self.metric_lock:
            self.in_flight.increment(1)
        # No early "accepted" response: it would let the tts stub run its BLS requests truly
        # concurrently (exec() returns with the first response, under STUB_IPC), which doubled
        # throughput but crashed the 2.51 tts stub (heap corruption in _PyObject_Malloc) under
        # high request rates; see bench/results/optimizations.md.
        group = RequestGroup(self.limits.audio_tokens(params.get("speed", 1.0)))  # the request's audio cap
        try:
            utterance.handles = self.engine.submit_group(
                engine_requests, [utterance.emit_for(i) for i in range(len(engine_requests))], group)
        except Exception:
            with self.metric_lock:
                self.in_flight.increment(-1)
            if rid:
                with self.lock:
                    self.active.pop(rid, None)
            raise

    def _heartbeat(self) -> None:
        """Every engine tick (sender thread): an empty non-final response to each request whose
        caller asked for one (``tts``: it checks its client's cancellation between responses)."""
        with self.lock:
            utterances = [u for u in self.active.values() if u.wants_heartbeat]
        for utterance in utterances:
            utterance.heartbeat()

    def _reference(self, request) -> EngineReference | None:
        """A per-request reference (REF_* inputs) as prompt tokens and ge of this version, cached."""
        key = _value(request, "REF_KEY")
        if key is None:
            return None
        values = {n: _value(request, n) for n in ("REF_PHONES", "REF_BERT", "REF_SSL", "REF_SPECS",
                                                    "REF_SPEC_FRAMES", "REF_WAV32K", "REF_WAV_LENGTHS")}
        missing = [n for n in ("REF_PHONES", "REF_BERT", "REF_SPECS", "REF_SPEC_FRAMES") if values[n] is None]
        if missing:
            raise RequestError(f"REF_KEY needs {', '.join(missing)}")

        def compute() -> EngineReference:
            specs = reference_mod.split_by_lengths(values["REF_SPECS"], values["REF_SPEC_FRAMES"], axis=1)
            sv = None
            if self.engine.is_pro:
                if values["REF_WAV32K"] is None or values["REF_WAV_LENGTHS"] is None:
                    raise RequestError("a v2Pro/v2ProPlus voice needs REF_WAV32K and REF_WAV_LENGTHS")
                clips = reference_mod.split_by_lengths(values["REF_WAV32K"], values["REF_WAV_LENGTHS"], axis=0)
                if len(clips) != len(specs):
                    raise RequestError(f"{len(clips)} clips for {len(specs)} spectrograms")
                sv = [_sv_embedding(clip) for clip in clips]
            mel = None
            if self.engine.is_v4:  # the CFM prompt: the main clip's normalized log-mel
                if values["REF_WAV32K"] is None or values["REF_WAV_LENGTHS"] is None:
                    raise RequestError("a v4 voice needs REF_WAV32K and REF_WAV_LENGTHS")
                main = reference_mod.split_by_lengths(values["REF_WAV32K"], values["REF_WAV_LENGTHS"], axis=0)[0]
                mel = mel_v4.reference_mel(np.asarray(main, np.float32))
            return self.engine.make_reference(values["REF_PHONES"], values["REF_BERT"], values["REF_SSL"], specs, sv,
                                              mel=mel)

        value, hit, evicted = self.ref_cache.get_or_compute(_text(key), compute)
        self.cache_metrics.count("hit" if hit else "miss")
        self.cache_metrics.count("eviction", evicted)
        return value

    def _response(self, audio: np.ndarray, finish_reason: str):
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("AUDIO", audio.astype(np.float32)),
            pb_utils.Tensor("SAMPLE_RATE", np.array([self.sample_rate], np.int32)),
            pb_utils.Tensor("VOICE_VERSION", np.array([self.version], np.int32)),
            pb_utils.Tensor("FINISH_REASON", np.array([finish_reason.encode()], dtype=object)),
        ])

    def _send(self, sender, request, utterance: Utterance, rid: str | None, out: Outgoing) -> None:
        if is_cancelled(request) and not out.final:
            utterance.cancel()  # a direct client of this model went away
            return
        if out.final:
            with self.metric_lock:
                self.in_flight.increment(-1)
            if rid:
                with self.lock:
                    self.active.pop(rid, None)
            self._log_timing(utterance, out.finish_reason)
        with self.metric_lock:
            self._count(out.finish_reason)
        if out.error:
            send(sender, pb_utils.InferenceResponse(error=pb_utils.TritonError(out.error, pb_utils.TritonError.INTERNAL)),
                 flags=FINAL)
            return
        send(sender, self._response(out.audio, out.finish_reason), flags=FINAL if out.final else 0)

    def _log_timing(self, utterance: Utterance, reasons: str) -> None:
        """One line per request: where its time went (per sentence: queue, GPT, audio) and the
        engine's cumulative graph seconds, so a slow request can be placed without a profiler."""
        parts = []
        for h in getattr(utterance, "handles", None) or []:
            t = h.timings()
            parts.append("/".join(f"{t[k]:.2f}" if k in t else "-" for k in ("queue_s", "gpt_s", "audio_s", "total_s"))
                         + f" {h.generated}tok")
        seconds = ", ".join(f"{k} {v:.1f}" for k, v in sorted(self.engine.seconds.items()))
        LOG.info("[voice] %s v%d request done (%s): queue/gpt/audio/total s per sentence: %s; engine graph s: %s",
                 self.name, self.version, reasons or "-", "; ".join(parts) or "-", seconds)

    def finalize(self):
        engine = getattr(self, "engine", None)
        if engine is None:  # initialize failed: nothing loaded, nothing to release
            return
        LOG.info("[voice] %s version %d unloading: draining %d in-flight requests", self.name, self.version,
                 engine.in_flight)
        engine.close()
        _record(self.repo, self.voice, self.version, "released")

"""Single-request GPT-SoVITS decode loop over the exported ``gpt_prefill`` / ``gpt_step`` graphs.

numpy + onnxruntime only. Inputs and outputs are bound by name and the graphs' metadata is
checked at open, so a graph from another model family (or a mismatched pair) fails at load,
not mid-request. The in-flight batching server reuses ``GPTRunner.step`` and ``sampling``.

Returned tokens: every sampled token in order, EXCEPT a final EOS (EOS is not a semantic
code for SoVITS). When the stop comes from ``early_stop_num`` the token that crossed the
limit is kept, so ``early_stop_num=20`` yields 21 tokens (as the kit's ``greedy_tokens``).
When upstream stops because the argmax is EOS but the sampled token is not, that sampled
token is kept too. ``last_stop_reason`` tells which rule ended the last ``generate``.

Providers: each graph opens with its version folder's choice for its stage
(``python_backend.providers``) unless the caller names one list for both. When the decode step
runs on CUDA it runs with I/O binding and the KV cache stays on the device between steps
(``KVCache.on_device``); ``io_binding=True`` takes that path on any provider (CPU ``OrtValue``
buffers), which is how CPU tests check it gives the same tokens as the plain path.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from python_backend import providers as providers_mod
from python_backend import sampling
from python_backend.kv_cache import KVCache, append_graph

MODEL_TYPE = "gpt-sovits-t2s"
REQUIRED_METADATA = ("model_type", "n_layer", "n_head", "d_model", "vocab_size", "phone_vocab_size", "eos")
PREFILL_IO = (("phones", "bert", "prompts"), ("logits", "out_k_cache", "out_v_cache"))
STEP_OUTPUTS = ("logits", "new_k", "new_v")
STEP_FORMAT = "2"  # 2: caller-owned per-layer cache buffers (1: the step returned the whole cache)


def step_io(n_layer: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    names = ("token", "position", "attn_mask") + tuple(f"past_{kv}_{i}" for kv in "kv" for i in range(n_layer))
    return names, STEP_OUTPUTS


class GPTGraphError(RuntimeError):
    """The ONNX graphs are not a matching GPT-SoVITS prefill/step pair."""


def _metadata(sess: ort.InferenceSession, path: str) -> dict[str, str]:
    meta = dict(sess.get_modelmeta().custom_metadata_map)
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    if missing:
        raise GPTGraphError(f"{path}: metadata keys missing: {missing}")
    if meta["model_type"] != MODEL_TYPE:
        raise GPTGraphError(f"{path}: model_type {meta['model_type']!r}, expected {MODEL_TYPE!r}")
    return meta


def check_step_format(meta: dict[str, str], path: str) -> None:
    if meta.get("step_format") != STEP_FORMAT:
        raise GPTGraphError(f"{path}: decode-step format {meta.get('step_format', '1')!r}, this server needs "
                            f"{STEP_FORMAT!r} (caller-owned KV cache); re-export the voice with this version")


def _check_io(sess: ort.InferenceSession, path: str, io: tuple) -> None:
    ins = {i.name for i in sess.get_inputs()}
    outs = {o.name for o in sess.get_outputs()}
    if ins != set(io[0]) or not set(io[1]) <= outs:
        raise GPTGraphError(f"{path}: inputs {sorted(ins)} / outputs {sorted(outs)}, expected {list(io[0])} / {list(io[1])}")


def _resolutions(prefill_path: Path, step_path: Path, providers) -> tuple:
    """None: CPU for both (the exporter's checks); ``onnx_stage.providers()``' list: each graph's
    version choice; a ``ProviderPlan``: its choice per graph; any other list: that list for both."""
    from python_backend.onnx_stage import PerStage

    if isinstance(providers, (PerStage, providers_mod.ProviderPlan)):
        plan = providers if isinstance(providers, providers_mod.ProviderPlan) else None
        return providers_mod.resolve_graph(prefill_path, plan=plan), providers_mod.resolve_graph(step_path, plan=plan)
    names = providers or ["CPUExecutionProvider"]
    return tuple(providers_mod.Resolution(stage, "explicit", tuple((n, {}) for n in names))
                 for stage in ("gpt_prefill", "gpt_step"))


class GPTRunner:
    def __init__(self, prefill_path: str | Path, step_path: str | Path, providers=None,
                 session_options: ort.SessionOptions | None = None, io_binding: bool | None = None):
        """``io_binding``: None: when the step runs on CUDA; True/False: always/never."""
        self.prefill_resolution, self.step_resolution = _resolutions(Path(prefill_path), Path(step_path), providers)
        self.prefill_sess = providers_mod.open_session(Path(prefill_path), session_options, self.prefill_resolution)
        self.step_sess = providers_mod.open_session(Path(step_path), session_options, self.step_resolution)
        _check_io(self.prefill_sess, str(prefill_path), PREFILL_IO)
        meta_p = _metadata(self.prefill_sess, str(prefill_path))
        meta_s = _metadata(self.step_sess, str(step_path))
        check_step_format(meta_s, str(step_path))
        _check_io(self.step_sess, str(step_path), step_io(int(meta_s["n_layer"])))
        for key in REQUIRED_METADATA:
            if meta_p[key] != meta_s[key]:
                raise GPTGraphError(f"prefill and step graphs disagree on {key}: {meta_p[key]} vs {meta_s[key]}")
        self.metadata = meta_p
        self.n_layer = int(meta_p["n_layer"])
        self.n_head = int(meta_p["n_head"])
        self.d_model = int(meta_p["d_model"])
        self.vocab_size = int(meta_p["vocab_size"])
        self.phone_vocab_size = int(meta_p["phone_vocab_size"])
        self.eos = int(meta_p["eos"])
        # exports before reference-free support could not reshape an empty prompt list
        self.empty_prompts = meta_p.get("empty_prompts") == "1"
        self.last_stop_reason: str | None = None
        self.io_binding = self.step_resolution.io_binding if io_binding is None else bool(io_binding)
        self.device = self.step_resolution.device
        self._appender = None
        if self.io_binding:
            names, opts = self.step_resolution.ort_args()
            keep = [(n, o) for n, o in zip(names, opts) if n != providers_mod.TRT]  # a scatter needs no engine
            self._appender = ort.InferenceSession(append_graph(self.n_layer), session_options,
                                                  providers=[n for n, _ in keep], provider_options=[o for _, o in keep])

    # ------------------------------------------------------------ graph calls
    def prefill(self, phones: np.ndarray, bert: np.ndarray, prompts: np.ndarray):
        """phones [B,P] int64, bert [B,1024,P] f32, prompts [B,T] int64 -> (logits, k, v)."""
        feeds = {
            "phones": np.ascontiguousarray(phones, dtype=np.int64),
            "bert": np.ascontiguousarray(bert, dtype=np.float32),
            "prompts": np.ascontiguousarray(prompts, dtype=np.int64),
        }
        return self.prefill_sess.run(list(PREFILL_IO[1]), feeds)

    def start_cache(self, k: np.ndarray, v: np.ndarray) -> KVCache:
        """The decode cache for prefill outputs ``[L,B,S,D]``."""
        return KVCache.from_prefill(k, v, self.n_head)

    def step(self, token: np.ndarray, position: np.ndarray, cache: KVCache) -> np.ndarray:
        """token [B,1], position [B]; reads ``cache`` in place, appends the new keys, returns logits [B,V]."""
        if self.io_binding:
            return self._bound_step(token, position, cache)
        batch = cache.batch
        feeds = cache.feeds()
        feeds["token"] = np.asarray(token, dtype=np.int64).reshape(batch, 1)
        feeds["position"] = np.asarray(position, dtype=np.int64).reshape(batch)
        logits, new_k, new_v = self.step_sess.run(list(STEP_OUTPUTS), feeds)
        cache.append(new_k, new_v)
        return logits

    def _bound_step(self, token: np.ndarray, position: np.ndarray, cache: KVCache) -> np.ndarray:
        """:meth:`step` with the cache's device buffers bound in place; new keys stay on the device."""
        batch = cache.batch
        bufs = cache.on_device(self.device)
        io = self.step_sess.io_binding()
        io.bind_cpu_input("token", np.ascontiguousarray(np.asarray(token, dtype=np.int64).reshape(batch, 1)))
        io.bind_cpu_input("position", np.ascontiguousarray(np.asarray(position, dtype=np.int64).reshape(batch)))
        io.bind_cpu_input("attn_mask", cache.mask)
        for i in range(self.n_layer):
            io.bind_ortvalue_input(f"past_k_{i}", bufs.k[i])
            io.bind_ortvalue_input(f"past_v_{i}", bufs.v[i])
        io.bind_output("logits", "cpu")
        io.bind_output("new_k", self.device)
        io.bind_output("new_v", self.device)
        self.step_sess.run_with_iobinding(io)
        logits, new_k, new_v = io.get_outputs()
        cache.append_on_device(self._appender, new_k, new_v)
        return np.array(logits.numpy(), copy=True)  # owned: the bound output's buffer goes with the binding

    # ------------------------------------------------------------ decode loop
    def generate(self, phones, bert, prompts, top_k: int = 15, top_p: float = 1.0, temperature: float = 1.0,
                 repetition_penalty: float = 1.35, max_new_tokens: int = sampling.DEFAULT_MAX_NEW_TOKENS,
                 seed: int | None = None, early_stop_num: int = -1) -> np.ndarray:
        """Decode one request (batch 1); returns generated tokens int64 [N] (see module doc for EOS)."""
        phones = np.asarray(phones, dtype=np.int64).reshape(1, -1)
        prompts = np.asarray(prompts, dtype=np.int64).reshape(1, -1)
        bert = np.asarray(bert, dtype=np.float32)
        if bert.ndim == 2:
            bert = bert[None]
        if max_new_tokens <= 0:
            self.last_stop_reason = sampling.STOP_BUDGET
            return np.zeros(0, np.int64)
        rng = np.random.default_rng(seed)
        n_prompt = prompts.shape[1]
        history = np.empty(n_prompt + max_new_tokens, dtype=np.int64)
        history[:n_prompt] = prompts[0]
        logits, k, v = self.prefill(phones, bert, prompts)
        cache = self.start_cache(k, v)
        generated = 0
        while True:
            masked = sampling.mask_eos(logits, generated, self.eos)
            tokens, argmax = sampling.sample(
                masked, [history[: n_prompt + generated]], top_k=top_k, top_p=top_p, temperature=temperature,
                repetition_penalty=repetition_penalty, rng=rng)
            history[n_prompt + generated] = tokens[0]
            generated += 1
            reason = sampling.stop_reason(generated, argmax[0], tokens[0], self.eos, early_stop_num, max_new_tokens)
            if reason is not None:
                break
            logits = self.step(tokens.reshape(1, 1), np.array([n_prompt + generated - 1]), cache)
        self.last_stop_reason = reason
        out = history[n_prompt: n_prompt + generated].copy()
        if out.size and out[-1] == self.eos:
            out = out[:-1]
        return out

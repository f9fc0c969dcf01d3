"""Load-time validation of a voice version, and quarantine of a version that fails it.

Triton-free (numpy + onnxruntime through the engine), so it runs in tests and tools as well as
inside the voice model's ``initialize``:

* :func:`check_audio` - problems of one synthesized waveform: non-finite samples, silence,
  clipping, pops (sample-to-sample jumps), a duration that does not fit its token count.
* :func:`preflight` - before any graph opens: the manifest reads, every file it hashes (graphs,
  ``model.py``, ``reference.npz``, ``golden.npz``) is unchanged, and the voice's ``config.pbtxt``
  is what this code renders for the voice apart from the version policy (:func:`check_config`;
  a mismatch refuses the load but quarantines nothing: the config belongs to every version).
* :func:`validate` - everything a version must pass before it serves: graph files match the
  manifest's hashes, graph sizes match the manifest, the golden sample (graphs vs. the torch
  outputs recorded at export, tolerance by precision), and :func:`check_audio` on the golden
  waveform and on one short greedy synthesis of the golden's target phones through the
  engine's own graphs. Raises :class:`ValidationError` with a one-line reason.
* :func:`quarantine` - move a refused version folder out of the model (one atomic rename) to
  ``REPO/.gsv/quarantine/voice_<NAME>.<N>.<UTC stamp>/`` with ``reason.txt``, and record
  ``failed`` + ``quarantined`` in the history. Out of the model folder, Triton's version
  policy (latest 1) never picks it again, at the next ``load_model`` or after a restart.

Thresholds (measured; see ``tests/test_hot_swap.py`` and the numbers in the comments):

* ``SILENCE_RMS = 1e-3`` (-60 dBFS). Random-weight demo voices: RMS 0.07-0.08 (tiny, seeds
  3/4, golden and engine output); speech at any usable recording level is above -40 dBFS.
  A vocoder whose last conv is zero gives exactly 0.
* ``CLIP_LEVEL = 0.999``, ``CLIP_MAX_SHARE = 1e-3``: the vocoder ends in ``tanh``, so samples
  at 0.999 mean saturation. Demo voices: share 0 (peak <= 0.5). 0.1 % = 32 saturated samples
  per second.
* Pops: a jump ``|x[n+1] - x[n]|`` is a pop when it exceeds ``POP_MIN_JUMP = 0.25`` AND
  ``POP_RATIO = 8`` times the RMS of the sample-to-sample differences in the ±10 ms around it
  (the jump itself and its neighbours excluded). Demo voices are noise-like (difference RMS
  about 0.1, largest jump 0.43-0.53), their largest local ratio is about 5.5 (see
  ``max_pop_ratio``); a Gaussian signal reaches ~5 over 30 s. The smooth harmonic demo
  reference clip stays below 3. A spike of 0.8 into such audio is a ratio of ~8-10.
* Duration: the vocoder makes exactly ``2 * hop = 1280`` samples per semantic token at speed 1,
  so a sentence's length must equal ``n_tokens * 1280`` (speed != 1: ``latent_frames * hop``
  ± one frame), and its token count must lie between ``EOS_MASK_STEPS`` (11; the GPT cannot
  stop earlier) and the sentence's token budget.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import errno
import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from python_backend import golden, history, layout, sampling
from python_backend.atomic_io import fsync_dir, write_atomic
from python_backend.manifest import CONFIG_FILE, ManifestError, config_without_policy, sha256_file
from python_backend.repo_lock import repo_lock

log = logging.getLogger(__name__)

SILENCE_RMS = 1e-3
CLIP_LEVEL = 0.999
CLIP_MAX_SHARE = 1e-3
POP_MIN_JUMP = 0.25
POP_RATIO = 8.0
POP_WINDOW_S = 0.010
POP_GUARD = 2
SAMPLES_PER_TOKEN = 1280  # 2 latent frames per 25 Hz token x hop 640 at 32 kHz
MIN_TOKENS = sampling.EOS_MASK_STEPS
VALIDATION_TOKENS = 40  # greedy synthesis at load: 1.6 s of audio, enough to hear a broken vocoder
REASON_FILE = "reason.txt"


class ValidationError(RuntimeError):
    """The version must not serve; ``str(exc)`` is a one-line reason."""


class ConfigMismatch(ValidationError):
    """The voice's config.pbtxt is not what this code writes for it: no version of the voice
    should serve, but no version is at fault (nothing is quarantined)."""


# --------------------------------------------------------------------------- audio


def _local_diff_rms(jumps: np.ndarray, half: int, guard: int) -> np.ndarray:
    """RMS of ``jumps`` in ``[i - half, i + half]`` minus ``[i - guard, i + guard]``, per ``i``."""
    n = jumps.size
    sq = np.concatenate([[0.0], np.cumsum(jumps.astype(np.float64) ** 2)])
    idx = np.arange(n)

    def window_sum(h):
        lo, hi = np.clip(idx - h, 0, n), np.clip(idx + h + 1, 0, n)
        return sq[hi] - sq[lo], (hi - lo)

    outer, n_outer = window_sum(half)
    inner, n_inner = window_sum(guard)
    count = np.maximum(n_outer - n_inner, 1)
    return np.sqrt(np.maximum(outer - inner, 0.0) / count)


def pop_ratios(wav: np.ndarray, sample_rate: int, window_s: float = POP_WINDOW_S,
               guard: int = POP_GUARD) -> tuple[np.ndarray, np.ndarray]:
    """Per jump: ``|x[n+1] - x[n]|`` and its ratio to the local RMS of jumps around it."""
    x = np.asarray(wav, np.float64).ravel()
    if x.size < 2:
        return np.zeros(0), np.zeros(0)
    jumps = np.abs(np.diff(x))
    local = _local_diff_rms(jumps, max(guard + 1, int(window_s * sample_rate)), guard)
    return jumps, jumps / np.maximum(local, 1e-9)


def max_pop_ratio(wav: np.ndarray, sample_rate: int, min_jump: float = POP_MIN_JUMP) -> float:
    """The largest local ratio among jumps above ``min_jump`` (0 when there are none): calibration aid."""
    jumps, ratios = pop_ratios(wav, sample_rate)
    big = jumps > min_jump
    return float(ratios[big].max()) if np.any(big) else 0.0


def expected_samples(n_tokens: int, speed: float = 1.0, samples_per_token: int = SAMPLES_PER_TOKEN) -> int:
    if speed == 1:
        return int(n_tokens) * samples_per_token
    return (int(2 * n_tokens / speed) + 1) * (samples_per_token // 2)


def check_audio(wav: np.ndarray, sample_rate: int, n_tokens: int | None, *, speed: float = 1.0,
                samples_per_token: int = SAMPLES_PER_TOKEN, min_tokens: int = MIN_TOKENS,
                max_tokens: int | None = None, silence_rms: float = SILENCE_RMS, clip_level: float = CLIP_LEVEL,
                clip_max_share: float = CLIP_MAX_SHARE, pop_min_jump: float = POP_MIN_JUMP,
                pop_ratio: float = POP_RATIO) -> list[str]:
    """Problems of one sentence's waveform (empty list: it is plausible audio).

    ``n_tokens``: semantic tokens it was made from (None: skip the duration checks). The length
    must be ``n_tokens * samples_per_token`` at speed 1 (one latent frame of slack otherwise);
    ``n_tokens`` must lie in ``[min_tokens, max_tokens]`` (``max_tokens`` None: no upper bound).
    """
    x = np.asarray(wav).ravel()
    problems = []
    if x.size == 0:
        return ["audio is empty"]
    finite = np.isfinite(x)
    if not finite.all():
        bad = int(x.size - finite.sum())
        return [f"audio has {bad} non-finite samples of {x.size} (NaN/inf)"]
    x = x.astype(np.float64)
    rms = float(np.sqrt(np.mean(x * x)))
    if rms < silence_rms:
        problems.append(f"audio is silent (RMS {rms:.2e} < {silence_rms:.0e}, peak {np.abs(x).max():.2e})")
    clipped = float(np.mean(np.abs(x) >= clip_level))
    if clipped > clip_max_share:
        problems.append(f"audio is clipped ({clipped:.2%} of samples at |x| >= {clip_level}, limit {clip_max_share:.2%})")
    jumps, ratios = pop_ratios(x, sample_rate)
    pops = np.flatnonzero((jumps > pop_min_jump) & (ratios > pop_ratio))
    if pops.size:
        i = int(pops[np.argmax(jumps[pops])])
        problems.append(f"audio has {pops.size} pops (largest: jump {jumps[i]:.3f} at {i / sample_rate:.3f} s, "
                        f"{ratios[i]:.1f}x the local jump RMS; limits {pop_min_jump} and {pop_ratio}x)")
    if n_tokens is not None:
        expected = expected_samples(n_tokens, speed, samples_per_token)
        slack = 0 if speed == 1 else samples_per_token // 2
        if abs(x.size - expected) > slack:
            problems.append(f"audio length {x.size} samples does not fit {n_tokens} tokens (expected {expected})")
        if n_tokens < min_tokens or (max_tokens is not None and n_tokens > max_tokens):
            problems.append(f"implausible duration: {n_tokens} tokens, expected {min_tokens}.."
                            f"{'' if max_tokens is None else max_tokens} for this text")
    return problems


# --------------------------------------------------------------------------- version



def check_files(folder: Path, manifest) -> list[str]:
    """Graph files and the other hashed files (``model.py``, ``reference.npz``, ``golden.npz``)
    present and equal (sha256, size) to what the manifest recorded at export."""
    problems = []
    entries = [(entry.file, entry.sha256, entry.bytes) for _, entry in sorted(manifest.graphs.items())]
    for name, entry in sorted((manifest.files or {}).items()):
        if not isinstance(entry, dict) or "sha256" not in entry or "/" in name or name.startswith("."):
            problems.append(f"manifest entry for {name!r} is malformed")
            continue
        entries.append((name, entry["sha256"], entry.get("bytes")))
    for name, digest, size in entries:
        path = Path(folder) / name
        if not path.is_file():
            problems.append(f"{name} missing")
        elif (size is not None and path.stat().st_size != size) or sha256_file(path) != digest:
            problems.append(f"{name} differs from the manifest (sha256/size): corrupted or replaced")
    for name in ("reference.npz", manifest.golden_file, "model.py"):
        if name not in (manifest.files or {}) and not (Path(folder) / name).is_file():
            problems.append(f"{name} missing")
    return problems


def check_config(folder: Path, manifest=None) -> None:
    """The voice's ``config.pbtxt`` (one level above the version) equals what this code renders
    for the voice (``model_config.voice_model_spec``), apart from its version policy, which the
    swap commands rewrite. :class:`ConfigMismatch` (one line) otherwise."""
    from python_backend.model_config import voice_model_spec

    model_dir = Path(folder).parent
    path = model_dir / CONFIG_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigMismatch(f"{model_dir.name}/{CONFIG_FILE} unreadable ({exc.strerror or exc})") from None
    got = config_without_policy(text)
    want = config_without_policy(voice_model_spec(model_dir.name).render())
    if got == want:
        return
    line = next((f"line {i + 1}: {a.strip()!r}, expected {b.strip()!r}"
                 for i, (a, b) in enumerate(zip(got.splitlines(), want.splitlines())) if a != b),
                f"{len(got.splitlines())} lines, expected {len(want.splitlines())}")
    exported = ""
    recorded = getattr(manifest, "config", None) or {}
    if recorded.get("sha256_without_policy"):
        import hashlib

        same = hashlib.sha256(got.encode()).hexdigest() == recorded["sha256_without_policy"]
        exported = "; it is the config as exported" if same else "; it also differs from the config as exported"
    raise ConfigMismatch(f"{model_dir.name}/{CONFIG_FILE} differs from what gsv-triton writes for this voice "
                         f"(apart from the version policy), {line}{exported}: edited by hand or replaced; "
                         f"re-export or restore it, no version is quarantined for it")


def preflight(folder: Path) -> None:
    """Before any graph is opened: the manifest reads and validates (:class:`ManifestError`),
    every file it hashes is present and unchanged (:class:`ValidationError`), and the voice's
    config.pbtxt is the one this code writes, policy aside (:class:`ConfigMismatch`)."""
    from python_backend.manifest import VoiceManifest

    manifest = VoiceManifest.read(folder)
    problems = check_files(folder, manifest)
    if problems:
        raise ValidationError("; ".join(problems))
    if Path(folder).parent.name.startswith(layout.VOICE_PREFIX):
        check_config(folder, manifest)


def check_sizes(engine) -> list[str]:
    """The loaded graphs have the architecture the manifest says the version was exported with."""
    sizes, gpt = engine.manifest.sizes, engine.gpt
    problems = [f"{key} {sizes[key]} in the manifest, {got} in the graphs"
                for key, got in (("gpt_layers", gpt.n_layer), ("gpt_width", gpt.d_model), ("gpt_heads", gpt.n_head),
                                 ("eos", gpt.eos)) if key in sizes and int(sizes[key]) != int(got)]
    if engine.hop != engine.manifest.hop_length:
        problems.append(f"vocoder hop {engine.hop}, manifest hop_length {engine.manifest.hop_length}")
    return problems


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


def validate(engine, verify_hashes: bool = True, tokens: int = VALIDATION_TOKENS) -> dict[str, float]:
    """Run every load-time check on a loaded :class:`VoiceEngine`; metrics on success, else
    :class:`ValidationError` (one line, all problems found, ``;``-separated)."""
    folder, manifest = Path(engine.folder), engine.manifest
    problems = check_files(folder, manifest) if verify_hashes else []
    if problems:
        raise ValidationError("; ".join(problems))
    problems = check_sizes(engine)
    if problems:
        raise ValidationError("architecture differs from the manifest: " + "; ".join(problems))
    try:
        sample = golden.GoldenSample.load(folder)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        raise ValidationError(f"golden sample unreadable: {_one_line(exc)}") from None
    sr = int(manifest.sample_rate)
    spt = engine.samples_per_token
    try:
        if engine.v4 is not None:
            if sample.cfm_steps is None or sample.cfm_seed is None:
                raise ValueError("the golden sample of a v4 version has no cfm_steps/cfm_seed")
            steps, seed = int(sample.cfm_steps), int(sample.cfm_seed)

            def synth(codes):
                return golden.synthesize_v4(engine.v4, engine.v4_prompt, codes, sample.target_phones, sample.ge,
                                            steps, seed)
        else:
            def synth(codes):
                return golden.synthesize(engine.sovits, engine.vocoder, codes, sample.target_phones, sample.ge)
        wav = synth(sample.codes)
        metrics = {**golden.measure_gpt(engine.gpt, sample), **golden.measure_wav(wav, sample)}
        n_target = int(sample.target_phones.shape[1])
        budget = min(int(tokens), engine_budget(n_target))
        toks = engine.gpt.generate(sample.phones, sample.bert, sample.prompts, top_k=1, max_new_tokens=budget, seed=0)
        speech = synth(toks[None]) if toks.size else np.zeros(0, np.float32)
    except Exception as exc:  # noqa: BLE001 - graphs that cannot even run the sample are the version's fault
        raise ValidationError(f"golden sample does not run through the graphs ({_one_line(exc)})") from None
    problems = [f"golden: {p}" for p in golden.failures(metrics, manifest.tolerances)]
    problems += [f"golden audio: {p}" for p in check_audio(wav, sr, int(sample.codes.shape[1]), samples_per_token=spt,
                                                           min_tokens=1)]
    problems += [f"greedy synthesis: {p}" for p in check_audio(speech, sr, int(toks.size), samples_per_token=spt,
                                                               max_tokens=budget)]
    if problems:
        raise ValidationError("; ".join(problems))
    metrics.update({"golden_rms": float(np.sqrt(np.mean(np.square(wav, dtype=np.float64)))),
                    "greedy_tokens": float(toks.size),
                    "greedy_max_pop_ratio": max_pop_ratio(speech, sr)})
    return metrics


def engine_budget(n_target_phones: int) -> int:
    from python_backend.voice_engine import token_budget  # the serving budget, same formula

    return token_budget(n_target_phones)


# --------------------------------------------------------------------------- faults

_RESOURCE_ERRNOS = {errno.ENOMEM, errno.ENOSPC, errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.EINTR, errno.EIO}
_RESOURCE_WORDS = ("bad_alloc", "bad allocation", "failed to allocate", "out of memory", "cudaerrormemoryallocation")


def is_version_fault(exc: BaseException) -> bool:
    """True when loading failed because of the version's files (quarantine it), False when the
    host is at fault (memory, descriptors, I/O errors: retrying later may succeed)."""
    if isinstance(exc, (MemoryError, KeyboardInterrupt, SystemExit, ConfigMismatch)):
        return False
    if isinstance(exc, (ValidationError, ManifestError, zipfile.BadZipFile, EOFError, KeyError, ValueError)):
        return True
    if isinstance(exc, OSError):
        return exc.errno not in _RESOURCE_ERRNOS  # missing file, not a dir, permission: the version's
    message = str(exc).lower()
    if any(word in message for word in _RESOURCE_WORDS):
        return False
    # onnxruntime raises its own classes (InvalidProtobuf, NoSuchFile, Fail, InvalidGraph, ...)
    # for unreadable graphs; the project's graph errors (StageError, GPTGraphError) too
    module = type(exc).__module__ or ""
    return module.startswith("onnxruntime") or type(exc).__name__ in ("StageError", "GPTGraphError")


def _utc_stamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")




def _history(repo: Path, event) -> None:
    try:
        history.append(repo, event)
    except OSError as exc:  # a full disk must not keep a bad version in place
        log.warning("[validation] cannot record %s in the history: %s", event.event, exc)


QUARANTINE_LOCK_TIMEOUT = 30.0


def _park(version_dir: Path, root: Path) -> Path:
    """One rename of ``version_dir`` into ``root`` under a fresh ``<model>.<N>.<UTC stamp>`` name."""
    model_dir, version = version_dir.parent, int(version_dir.name)
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"{model_dir.name}.{version}.{_utc_stamp()}"
    n = 1
    while target.exists():
        target = root / f"{model_dir.name}.{version}.{_utc_stamp()}-{n}"
        n += 1
    os.rename(version_dir, target)
    fsync_dir(model_dir)
    fsync_dir(root)
    return target


def quarantine(version_dir: Path, reason: str) -> Path:
    """Move a refused version out of its model folder; returns where it went.

    ``reason.txt`` is written inside the version folder first, then the folder moves with one
    ``rename`` (same file system: ``.gsv`` lives in the repository), so at any instant the
    version is either whole in the model folder or whole in quarantine. A crash before the
    rename leaves it in place: the next load refuses and quarantines it again.
    Appends history ``failed`` (the reason) and ``quarantined`` (where to).
    """
    version_dir = Path(version_dir)
    model_dir, repo = version_dir.parent, version_dir.parent.parent
    voice = model_dir.name[len(layout.VOICE_PREFIX):] if model_dir.name.startswith(layout.VOICE_PREFIX) else model_dir.name
    version = int(version_dir.name)
    reason = " ".join(str(reason).split())  # one line
    root = layout.quarantine_root(repo)
    _history(repo, history.Event(voice, version, "failed", reason=reason))
    try:
        write_atomic(version_dir / REASON_FILE, f"{reason}\n")
    except OSError as exc:  # read-only or full: the reason is still in the history; move anyway
        log.warning("[validation] cannot write %s: %s", version_dir / REASON_FILE, exc)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(repo_lock(repo, timeout=QUARANTINE_LOCK_TIMEOUT))
        except OSError as exc:  # timed out, read-only .gsv, no flock: a bad version must leave anyway
            log.warning("[validation] quarantining %s without the repository lock: %s", version_dir, exc)
        target = _park(version_dir, root)
    _history(repo, history.Event(voice, version, "quarantined", reason=f"moved to {target.relative_to(repo)}: {reason}"))
    log.warning("[validation] %s version %d quarantined to %s: %s", model_dir.name, version, target, reason)
    return target

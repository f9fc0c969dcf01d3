"""int8 static quantization of a v2 vocoder graph's convolutions, kept only above an SNR against fp32.

The vocoder is the largest CPU cost per audio second and is compute-bound in its convolutions, so
int8 convolutions (VNNI) are the lever; dynamic quantization cannot reach Conv, so this is static
quantization calibrated on the voice's own latents. The accepted error is measured on the wav
(SNR against the fp32 graph over several latents, the worst one counts), never assumed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from export.errors import InputError
from python_backend.golden import snr_db
from python_backend.onnx_stage import OnnxStage

#: Worst-latent wav SNR (dB) against the fp32 graph below which an int8 vocoder is refused: at
#: 30 dB the error is 1/1000 of the signal power, below the level of a 16-bit-free codec's noise
#: floor; the random-weight demo voices quantize to about 25 dB, which this refuses.
SNR_MIN_DB = 30.0
#: Kept in float: the first (latent in) and last (wav out) convolutions set the output's scale.
FLOAT_NODES = ("/dec/conv_pre/Conv", "/dec/conv_post/Conv")
NOISE_SCALE = 0.5  # the request default's noise level, so calibration latents look like served ones


@dataclass(frozen=True)
class Int8Recipe:
    """How the graph is quantized (onnxruntime.quantization.quantize_static arguments)."""
    fmt: str = "QDQ"  # or "QOperator"
    per_channel: bool = True
    method: str = "MinMax"  # or "Percentile", "Entropy"
    exclude: tuple[str, ...] = FLOAT_NODES

    @property
    def name(self) -> str:
        return f"int8 {self.fmt} {'per-channel' if self.per_channel else 'per-tensor'} {self.method}" + \
            (f" (float: {len(self.exclude)} convs)" if self.exclude else "")


@dataclass(frozen=True)
class VocoderFeed:
    """One vocoder input: latent [1, C, F] and ge [1, gin, 1], with the row's wav length."""
    latent: np.ndarray
    ge: np.ndarray
    samples: int


def latents(sovits: OnnxStage, codes: np.ndarray, phones: np.ndarray, ge: np.ndarray,
            seeds: tuple[int, ...]) -> list[VocoderFeed]:
    """The SoVITS stage's latents for one utterance at several noise seeds (one feed per seed)."""
    channels, hop = int(sovits.metadata.get("latent_channels", 192)), int(sovits.metadata.get("hop", 640))
    out = []
    for seed in seeds:
        frames = 2 * codes.shape[1]
        noise = (np.random.default_rng(seed).standard_normal((1, channels, frames)) * NOISE_SCALE).astype(np.float32)
        lat = sovits.run(codes=codes.astype(np.int64).reshape(1, -1), code_lengths=np.array([codes.size], np.int64),
                         phones=phones.astype(np.int64).reshape(1, -1), phone_lengths=np.array([phones.size], np.int64),
                         ge=ge.astype(np.float32), noise=noise, speed=np.ones(1, np.float32))
        out.append(VocoderFeed(lat["latent"], ge.astype(np.float32), int(lat["latent_lengths"][0]) * hop))
    return out


class _Reader:
    def __init__(self, feeds: list[VocoderFeed]):
        self._it = iter([{"latent": f.latent, "ge": f.ge} for f in feeds])

    def get_next(self):
        return next(self._it, None)


def quantize(src: Path, dst: Path, calibration: list[VocoderFeed], recipe: Int8Recipe = Int8Recipe()) -> Path:
    """Write ``dst``: ``src`` with its Conv/ConvTranspose weights and activations in int8."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not calibration:
        raise InputError("int8 vocoder: no calibration latents; give at least one")
    meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    tmp = Path(dst).with_suffix(".tmp.onnx")
    quantize_static(str(src), str(tmp), _Reader(calibration), quant_format=getattr(QuantFormat, recipe.fmt),
                    per_channel=recipe.per_channel, op_types_to_quantize=["Conv", "ConvTranspose"],
                    nodes_to_exclude=list(recipe.exclude), activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=getattr(CalibrationMethod, recipe.method))
    model = onnx.load(str(tmp))
    del model.metadata_props[:]
    for key, value in sorted({**meta, "quantization": recipe.name}.items()):
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(dst))
    tmp.unlink()
    return Path(dst)


def wav(stage: OnnxStage, feed: VocoderFeed) -> np.ndarray:
    return stage.run(latent=feed.latent, ge=feed.ge)["wav"][0, : feed.samples]


def snrs(reference: OnnxStage, candidate: OnnxStage, feeds: list[VocoderFeed]) -> list[float]:
    """Wav SNR (dB) of ``candidate`` against ``reference`` per feed."""
    return [round(snr_db(wav(reference, f), wav(candidate, f)), 2) for f in feeds]


def check(values: list[float], threshold: float = SNR_MIN_DB) -> None:
    """Refuse (one line) when the worst latent's SNR is below the threshold."""
    worst = min(values) if values else float("nan")
    if not worst >= threshold:
        raise InputError(f"int8 vocoder: wav SNR against fp32 is {worst:.1f} dB on its worst latent, below "
                         f"{threshold:.0f} dB; export this voice without --vocoder-int8 (its fp32 vocoder)")

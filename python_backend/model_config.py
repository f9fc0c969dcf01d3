"""config.pbtxt generated from code, so a model's config cannot drift from what its code reads.

Each model's inputs and outputs are declared once here as typed specs; ``render`` writes the
text format Triton reads, and tests parse the result with Triton's own ModelConfig
protobuf classes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

_DTYPES = {"INT64", "INT32", "FP32", "FP16", "BOOL", "BYTES"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # Triton type without the TYPE_ prefix
    dims: tuple[int, ...]
    optional: bool = False

    def render(self) -> str:
        if self.dtype not in _DTYPES:
            raise ValueError(f"tensor {self.name}: dtype {self.dtype!r} not one of {sorted(_DTYPES)}")
        dims = ", ".join(str(d) for d in self.dims)
        proto_type = "STRING" if self.dtype == "BYTES" else self.dtype  # Triton's config enum calls BYTES "STRING"
        opt = "\n    optional: true" if self.optional else ""
        return f'  {{\n    name: "{self.name}"\n    data_type: TYPE_{proto_type}\n    dims: [ {dims} ]{opt}\n  }}'


@dataclass
class ModelSpec:
    name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    decoupled: bool = False
    instance_count: int = 1
    max_batch_size: int = 0
    parameters: dict[str, str] = field(default_factory=dict)
    latest_versions: int | None = 1  # None: policy "all" (keeps every version folder loaded)
    specific_versions: tuple[int, ...] | None = None  # set: policy "specific" (a canary beside the active version)
    max_queue_size: int | None = None  # set: Triton queues at most this many requests, rejects more (UNAVAILABLE)

    def render(self) -> str:
        parts = [f'name: "{self.name}"', 'backend: "python"', f"max_batch_size: {self.max_batch_size}"]
        parts.append("input [\n" + ",\n".join(t.render() for t in self.inputs) + "\n]")
        parts.append("output [\n" + ",\n".join(t.render() for t in self.outputs) + "\n]")
        if self.decoupled:
            parts.append("model_transaction_policy {\n  decoupled: true\n}")
        if self.specific_versions:
            policy = f"specific {{ versions: [ {', '.join(str(int(v)) for v in sorted(set(self.specific_versions)))} ] }}"
        elif self.latest_versions is None:
            policy = "all { }"
        else:
            policy = f"latest {{ num_versions: {self.latest_versions} }}"
        parts.append(f"version_policy: {{ {policy} }}")
        parts.append(f"instance_group [\n  {{\n    count: {self.instance_count}\n    kind: KIND_CPU\n  }}\n]")
        if self.max_queue_size is not None:
            parts.append("dynamic_batching {\n  default_queue_policy {\n"
                         f"    max_queue_size: {self.max_queue_size}\n  }}\n}}")
        for key, value in sorted(self.parameters.items()):
            parts.append(f'parameters: {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}')
        return "\n".join(parts) + "\n"


SAMPLING_INPUTS = [
    TensorSpec("TOP_K", "INT32", (1,), optional=True),
    TensorSpec("TOP_P", "FP32", (1,), optional=True),
    TensorSpec("TEMPERATURE", "FP32", (1,), optional=True),
    TensorSpec("REPETITION_PENALTY", "FP32", (1,), optional=True),
    TensorSpec("NOISE_SCALE", "FP32", (1,), optional=True),
    TensorSpec("SPEED", "FP32", (1,), optional=True),
    TensorSpec("SEED", "INT64", (1,), optional=True),
    TensorSpec("SAMPLE_STEPS", "INT32", (1,), optional=True),  # v4 voices: CFM Euler steps 1-64
]


def voice_model_spec(model_name: str) -> ModelSpec:
    """One voice version: the phones (+ BERT features) of a request's sentences in, audio chunks out.

    All sentences of one request travel in one request (SENTENCE_PHONES splits PHONES), so
    a request runs on one version of the voice from its first sentence to its last.
    """
    return ModelSpec(
        name=model_name,
        inputs=[
            TensorSpec("PHONES", "INT64", (-1,)),
            TensorSpec("BERT", "FP32", (1024, -1)),
            TensorSpec("SENTENCE_PHONES", "INT32", (-1,), optional=True),
            TensorSpec("MAX_TOKENS", "INT32", (1,), optional=True),
            TensorSpec("STREAM", "BOOL", (1,), optional=True),
            TensorSpec("REQUEST_ID", "BYTES", (1,), optional=True),
            *cancel_inputs(),
            *SAMPLING_INPUTS,
            *voice_reference_inputs(),
        ],
        outputs=[
            TensorSpec("AUDIO", "FP32", (-1,)),
            TensorSpec("SAMPLE_RATE", "INT32", (1,)),
            TensorSpec("VOICE_VERSION", "INT32", (1,)),
            TensorSpec("FINISH_REASON", "BYTES", (1,)),
        ],
        decoupled=True,
    )


def voice_reference_inputs() -> list[TensorSpec]:
    """A per-request reference, prepared by the tts model (``python_backend.reference.prepare``):
    the voice turns it into prompt tokens and ge with its own graphs, cached under REF_KEY."""
    return [
        TensorSpec("REF_KEY", "BYTES", (1,), optional=True),
        TensorSpec("REF_PHONES", "INT64", (-1,), optional=True),
        TensorSpec("REF_BERT", "FP32", (1024, -1), optional=True),
        TensorSpec("REF_SSL", "FP32", (768, -1), optional=True),
        TensorSpec("REF_SPECS", "FP32", (1025, -1), optional=True),
        TensorSpec("REF_SPEC_FRAMES", "INT32", (-1,), optional=True),
        TensorSpec("REF_WAV32K", "FP32", (-1,), optional=True),
        TensorSpec("REF_WAV_LENGTHS", "INT32", (-1,), optional=True),
    ]


def cancel_inputs() -> list[TensorSpec]:
    """A request with CANCEL (a REQUEST_ID) stops that request: how a BLS frees the decode slot
    of a stream whose client went away (2.51's BLS cannot cancel a sub-request itself)."""
    return [TensorSpec("CANCEL", "BYTES", (1,), optional=True)]


# A reference clip per request (upstream api_v2's ref_audio_path / prompt_text / prompt_lang /
# aux_ref_audio_paths); without them the voice version's own reference is used.
REFERENCE_INPUTS = [
    TensorSpec("REF_AUDIO", "FP32", (-1,), optional=True),
    TensorSpec("REF_SAMPLE_RATE", "INT32", (1,), optional=True),
    TensorSpec("REF_TEXT", "BYTES", (1,), optional=True),
    TensorSpec("REF_LANGUAGE", "BYTES", (1,), optional=True),
    TensorSpec("AUX_REF_AUDIO", "FP32", (-1, -1), optional=True),
    TensorSpec("AUX_REF_LENGTHS", "INT32", (-1,), optional=True),
]

TTS_INPUTS = [
    TensorSpec("TEXT", "BYTES", (1,)),
    TensorSpec("VOICE", "BYTES", (1,)),
    TensorSpec("LANGUAGE", "BYTES", (1,), optional=True),
    TensorSpec("MAX_TOKENS", "INT32", (1,), optional=True),
    TensorSpec("VOICE_VERSION", "INT32", (1,), optional=True),  # pin a loaded version (default: routing)
    *SAMPLING_INPUTS,
    *REFERENCE_INPUTS,
]
TTS_OUTPUTS = [
    TensorSpec("AUDIO", "FP32", (-1,)),
    TensorSpec("SAMPLE_RATE", "INT32", (1,)),
    TensorSpec("VOICE_VERSION", "INT32", (1,)),
    TensorSpec("FINISH_REASON", "BYTES", (1,)),
]


# ``tts`` serves one request per instance (a stub process each, about 0.6 GiB with the text front
# end): this many requests reach the voice engine together; Triton queues up to TTS_QUEUE more
# and answers UNAVAILABLE beyond (bench/results/concurrency_design.md has the measurements).
TTS_INSTANCES = 4
TTS_QUEUE = 256


MAX_TTS_INSTANCES = 64


def tts_model_spec(instances: int = TTS_INSTANCES) -> ModelSpec:
    """Text in, the whole utterance out (HTTP or gRPC); ``instances`` requests served together."""
    if not 1 <= instances <= MAX_TTS_INSTANCES:
        raise ValueError(f"tts instances must be within 1-{MAX_TTS_INSTANCES}, got {instances}")
    return ModelSpec(name="tts", inputs=list(TTS_INPUTS), outputs=list(TTS_OUTPUTS),
                     instance_count=instances, max_queue_size=TTS_QUEUE)


def tts_stream_model_spec() -> ModelSpec:
    """Text in, audio chunks out as soon as each is ready (gRPC streaming); IS_FINAL marks the last."""
    return ModelSpec(name="tts_stream", inputs=list(TTS_INPUTS),
                     outputs=[*TTS_OUTPUTS, TensorSpec("IS_FINAL", "BOOL", (1,))], decoupled=True)


STATIC_MODELS = {"tts": tts_model_spec, "tts_stream": tts_stream_model_spec}


def bert_model_spec() -> ModelSpec:
    """Shared BERT (loaded once for all voices): TEXT (per-character rows) or INPUT_IDS in, features out."""
    return ModelSpec(
        name="gsv_bert",
        inputs=[TensorSpec("TEXT", "BYTES", (1,), optional=True), TensorSpec("INPUT_IDS", "INT64", (-1,), optional=True)],
        outputs=[TensorSpec("HIDDEN", "FP32", (-1, 1024))],
    )


def ssl_model_spec() -> ModelSpec:
    """Shared SSL: 16 kHz audio in, 50 Hz features out (zero-shot references)."""
    return ModelSpec(
        name="gsv_ssl",
        inputs=[TensorSpec("WAV16K", "FP32", (-1,))],
        outputs=[TensorSpec("SSL", "FP32", (768, -1))],
    )


def sv_model_spec() -> ModelSpec:
    """Shared speaker verification (v2Pro/v2ProPlus): 32 kHz mono audio in, the 20480-d sv_emb out."""
    return ModelSpec(
        name="gsv_sv",
        inputs=[TensorSpec("WAV32K", "FP32", (-1,))],
        outputs=[TensorSpec("SV_EMB", "FP32", (1, 20480))],
    )

"""Text front end: normalization, Chinese/English g2p and BERT alignment for GPT-SoVITS v2.

Import the API from :mod:`python_backend.text.frontend` (re-exported here).
No torch/transformers here: this runs inside Triton's Python backend.
"""
from .frontend import (  # noqa: F401
    BERT_DIM,
    DEFAULT_MAX_CHARS,
    CharTokenizer,
    PhoneSequence,
    TextError,
    bert_features_per_phone,
    phones_to_ids,
    split_sentences,
    symbols_v2,
    text_to_phones,
    warmup,
)

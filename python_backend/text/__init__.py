"""Text front end: upstream GPT-SoVITS v2's text → phones path, phone for phone.

Import the API from :mod:`python_backend.text.frontend` (re-exported here).
No torch/transformers here: this runs inside Triton's Python backend.
"""
from .frontend import (  # noqa: F401
    BERT_DIM,
    DEFAULT_MAX_CHARS,
    LANGUAGES,
    CharTokenizer,
    PhoneSequence,
    TextError,
    bert_features,
    configure,
    phones_to_ids,
    reference_phones,
    sentences,
    split_sentences,
    status,
    symbols_v2,
    text_to_phones,
    warmup,
)

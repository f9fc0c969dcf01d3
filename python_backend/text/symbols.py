"""The GPT-SoVITS v2 phone table (shared by v2, v2Pro, v2ProPlus, v3 and v4).

A phone id is the index of its symbol in ``symbols_v2.json`` (732 symbols), which
is a copy of the table the models were trained with; it ships with this package
because the runtime has no access to the conformance kit.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

SYMBOLS_FILE = Path(__file__).with_name("symbols_v2.json")

# Punctuation that is itself a phone in the v2 table.
PUNCTUATION = ("!", "?", "…", ",", ".", "-")


@lru_cache(maxsize=1)
def symbols_v2() -> tuple[str, ...]:
    with open(SYMBOLS_FILE, encoding="utf-8") as f:
        table = json.load(f)
    if len(table) != 732:
        raise RuntimeError(f"{SYMBOLS_FILE} has {len(table)} symbols, expected 732")
    return tuple(table)


@lru_cache(maxsize=1)
def symbol_to_id() -> dict[str, int]:
    return {s: i for i, s in enumerate(symbols_v2())}

"""Upstream GPT-SoVITS's text cut methods (api_v2's ``text_split_method``), cut0 to cut5.

Each method takes the request text and returns it with line breaks where upstream would cut;
the gateway sends the result to ``tts`` in one request (``tts`` starts a new sentence at every
line break, and still splits lines over 60 characters). The rules are upstream's
(``text_segmentation_method.py``); this implementation scans the text once per method, so it
runs in linear time on any input.

- cut0: no cut (a text of nothing but punctuation and spaces becomes an empty line)
- cut1: every four sentences (sentence: up to and including a mark of ``SENTENCE_MARKS``)
- cut2: about every 50 characters, at sentence marks
- cut3: at each Chinese full stop 。 (the stop itself is dropped)
- cut4: at each English full stop . that is not between digits (the stop is dropped)
- cut5: after every punctuation mark of ``CUT5_MARKS`` (a ``.`` between digits is kept inside)
"""
from __future__ import annotations

from typing import Callable

#: upstream's "punctuation": a piece made of these only is dropped (cut0-cut4)
FILLER = frozenset("!?…,.- ")
#: where ``split`` (cut1, cut2) ends a sentence
SENTENCE_MARKS = frozenset("，。？！,.?!~:：—…")
#: cut5's marks (upstream's set; its ";" appears twice, the full-width ； not at all)
CUT5_MARKS = frozenset(",.;?!、，。？！：…")


def _only(piece: str, marks: frozenset) -> bool:
    """True for a piece made only of ``marks`` (the empty piece included, as upstream's set test)."""
    return all(ch in marks for ch in piece)


def _keep(pieces: list[str], marks: frozenset = FILLER) -> str:
    return "\n".join(p for p in pieces if not _only(p, marks))


def sentences(text: str) -> list[str]:
    """Upstream's ``split``: "……" reads as 。 and "——" as ，, a final 。 is added when the text does
    not end with a sentence mark, and each piece ends just after a mark."""
    text = text.replace("……", "。").replace("——", "，")
    if not text:
        return []
    if text[-1] not in SENTENCE_MARKS:
        text += "。"
    pieces, start = [], 0
    for i, ch in enumerate(text):
        if ch in SENTENCE_MARKS:
            pieces.append(text[start:i + 1])
            start = i + 1
    return pieces


def cut0(text: str) -> str:
    return "\n" if _only(text, FILLER) else text


def cut1(text: str) -> str:
    text = text.strip("\n")
    pieces = sentences(text)
    if len(pieces) <= 4:   # one group: upstream returns the text as given
        return _keep([text])
    # groups of four; the last group also takes what is left over (upstream's slicing)
    starts = list(range(0, len(pieces), 4))[:-1]
    ends = starts[1:] + [len(pieces)]
    return _keep(["".join(pieces[a:b]) for a, b in zip(starts, ends)])


def cut2(text: str, size: int = 50) -> str:
    text = text.strip("\n")
    pieces = sentences(text)
    if len(pieces) < 2:
        return text
    groups, current, count = [], [], 0
    for piece in pieces:
        current.append(piece)
        count += len(piece)
        if count > size:
            groups.append("".join(current))
            current, count = [], 0
    if current:
        groups.append("".join(current))
    if len(groups) > 1 and len(groups[-1]) < size:  # a short tail joins the group before it
        tail = groups.pop()
        groups[-1] += tail
    return _keep(groups)


def cut3(text: str) -> str:
    return _keep(text.strip("\n").strip("。").split("。"))


def cut4(text: str) -> str:
    text = text.strip("\n").strip(".")
    pieces, start, n = [], 0, len(text)
    for i, ch in enumerate(text):
        if ch == "." and not (i > 0 and text[i - 1].isdigit()) and not (i + 1 < n and text[i + 1].isdigit()):
            pieces.append(text[start:i])
            start = i + 1
    pieces.append(text[start:])
    return _keep(pieces)


def cut5(text: str) -> str:
    text = text.strip("\n")
    pieces, start, n = [], 0, len(text)
    for i, ch in enumerate(text):
        if ch not in CUT5_MARKS:
            continue
        if ch == "." and 0 < i < n - 1 and text[i - 1].isdigit() and text[i + 1].isdigit():
            continue   # a decimal point
        pieces.append(text[start:i + 1])
        start = i + 1
    if start < n:
        pieces.append(text[start:])
    return _keep(pieces, CUT5_MARKS)


METHODS: dict[str, Callable[[str], str]] = {
    "cut0": cut0, "cut1": cut1, "cut2": cut2, "cut3": cut3, "cut4": cut4, "cut5": cut5}


def cut(text: str, method: str) -> list[str]:
    """The lines ``method`` makes of ``text`` (empty ones dropped, as upstream's preprocessor does)."""
    try:
        fn = METHODS[method]
    except KeyError:
        raise ValueError(f"text_split_method: {method} is not supported; use one of {', '.join(METHODS)}") from None
    return [line for line in fn(text).split("\n") if line.strip()]

"""Text → pieces of phones, as upstream v2's ``TextPreprocessor.preprocess(text, mode, "cut0")``.

Order of operations (upstream's):

1. consecutive pause marks (``! ? … , . -``) fold into the first;
2. ``pre_seg_text``: a leading ``。`` (``.`` for ``en``) when the first clause is shorter than
   4 characters; line breaks cut the text into pieces, pieces shorter than 5 characters are
   joined to their neighbours, pieces of only symbols are dropped, each piece ends with a
   stop (``。``, or ``.`` for ``en``), pieces over 510 characters are cut at punctuation;
3. each piece: runs of spaces fold to one, the mode splits it into language segments
   (``langsegment``), each segment is cleaned (``cleaner``); a piece of fewer than 6 phones
   is tried once more with ``.`` in front;
4. pieces whose normalized text is empty are dropped.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .cleaner import CleanSegment, clean_segment
from .langsegment import MODES, segments_for_mode

# Marks that end a clause (upstream's ``splits``).
CLAUSE_MARKS = frozenset("，。？！,.?!~:：—…")
# Marks that fold when repeated (upstream's ``punctuation`` of the preprocessor).
PAUSE_MARKS = frozenset("!?…,.-")
MAX_PIECE_CHARS = 510
MIN_PIECE_CHARS = 5
MIN_PHONES = 6


class TextError(ValueError):
    """Text that cannot be turned into phones (empty, unpronounceable, wrong language)."""


@dataclass
class Piece:
    """One piece of the request (upstream speaks each as its own sentence)."""

    text: str                                  # after pre_seg_text's rules
    segments: list[CleanSegment] = field(default_factory=list)
    retried: bool = False                      # the "." retry for fewer than 6 phones happened

    @property
    def phones(self) -> list[str]:
        return [p for s in self.segments for p in s.phones]

    @property
    def norm_text(self) -> str:
        return "".join(s.norm_text for s in self.segments)

    @property
    def word2ph(self) -> list[int] | None:
        if any(s.word2ph is None for s in self.segments):
            return None
        return [n for s in self.segments for n in s.word2ph]


def fold_repeated_pauses(text: str) -> str:
    """``,,,`` → ``,`` and ``?!`` → ``?``: a run of pause marks keeps its first."""
    out: list[str] = []
    prev_pause = False
    for ch in text:
        is_pause = ch in PAUSE_MARKS
        if is_pause and prev_pause:
            continue
        out.append(ch)
        prev_pause = is_pause
    return "".join(out)


def _first_clause(text: str) -> str:
    for i, ch in enumerate(text):
        if ch in CLAUSE_MARKS:
            return text[:i].strip()
    return text.strip()


def _merge_short(texts: list[str], threshold: int) -> list[str]:
    if len(texts) < 2:
        return texts
    out: list[str] = []
    acc = ""
    for t in texts:
        acc += t
        if len(acc) >= threshold:
            out.append(acc)
            acc = ""
    if acc:
        if out:
            out[-1] += acc
        else:
            out.append(acc)
    return out


def _has_word_char(text: str) -> bool:
    """Upstream drops pieces that ``re.sub(r"\\W+", "", piece)`` empties."""
    return any(ch.isalnum() or ch == "_" for ch in text)


def _cut_long(text: str, max_len: int = MAX_PIECE_CHARS) -> list[str]:
    """Cut at clause marks (each mark its own part) into parts of at most ``max_len``."""
    parts: list[str] = []
    start = 0
    for i, ch in enumerate(text):
        if ch in CLAUSE_MARKS:
            parts.extend([text[start:i], ch])
            start = i + 1
    parts.append(text[start:])
    out: list[str] = []
    cur = ""
    for part in parts:
        if len(cur) + len(part) > max_len:
            out.append(cur)
            cur = part
        else:
            cur += part
    if cur:
        out.append(cur)
    return out


def split_pieces(text: str, mode: str) -> list[str]:
    """Upstream's ``pre_seg_text`` with ``cut0`` (no cutting beyond line breaks)."""
    stop = "." if mode == "en" else "。"
    text = text.strip("\n")
    if not text:
        return []
    if text[0] not in CLAUSE_MARKS and len(_first_clause(text)) < 4:
        text = stop + text
    if set(text) <= set("!?…,.- "):          # cut0 turns a text of only pauses into a break
        text = "\n"
    while "\n\n" in text:
        text = text.replace("\n\n", "\n")
    lines = text.split("\n")
    if all(t in ("", " ", "\n") for t in lines):
        raise TextError("text is empty")
    lines = [t for t in lines if t not in ("", " ")]
    pieces: list[str] = []
    for piece in _merge_short(lines, MIN_PIECE_CHARS):
        if not piece.strip() or not _has_word_char(piece):
            continue
        if piece[-1] not in CLAUSE_MARKS:
            piece += stop
        pieces.extend(_cut_long(piece) if len(piece) > MAX_PIECE_CHARS else [piece])
    return pieces


def _fold_spaces(text: str) -> str:
    out: list[str] = []
    for ch in text:
        if ch == " " and out and out[-1] == " ":
            continue
        out.append(ch)
    return "".join(out)


def piece_to_phones(text: str, mode: str, g2pw=None) -> Piece:
    """Upstream's ``get_phones_and_bert`` without the BERT part."""
    piece = _phones_once(text, mode, g2pw)
    if len(piece.phones) < MIN_PHONES:
        retry = _phones_once("." + text, mode, g2pw)
        retry.text, retry.retried = text, True
        return retry
    return piece


def _phones_once(text: str, mode: str, g2pw) -> Piece:
    text = _fold_spaces(text)
    segments = [clean_segment(s.text, s.lang, g2pw) for s in segments_for_mode(text, mode)]
    return Piece(text=text, segments=segments)


def preprocess(text: str, mode: str, g2pw=None) -> list[Piece]:
    """Upstream's ``preprocess(text, mode, "cut0", "v2")``: the kept pieces, in order."""
    if mode not in MODES:
        raise TextError(f"unknown language mode {mode!r}; use one of {', '.join(MODES)}")
    pieces = []
    for piece_text in split_pieces(fold_repeated_pauses(text), mode):
        piece = piece_to_phones(piece_text, mode, g2pw)
        if piece.norm_text:
            pieces.append(piece)
    return pieces

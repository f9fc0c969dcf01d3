"""g2p_en's data: its neural guesser for unknown words and its homograph table.

Upstream's ``en_G2p`` subclasses ``g2p_en.G2p``: words missing from every dictionary go
to its small GRU encoder-decoder (``checkpoint20.npz``), and homographs are chosen from
``homographs.en`` by part of speech.  Importing ``g2p_en`` calls ``nltk.download`` (network)
when NLTK data is missing, which a server must never do.  So we locate the installed
package with ``importlib.util.find_spec`` (no import), read those two files as data, and run
the same greedy decoding here with numpy, in float32 like the original.  Without the package
both are absent: unknown words are then spelled (see ``en_g2p``) and no homographs apply.
"""
from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np

GRAPHEMES = ("<pad>", "<unk>", "</s>") + tuple("abcdefghijklmnopqrstuvwxyz")
PHONEMES = ("<pad>", "<unk>", "<s>", "</s>") + tuple(
    "AA0 AA1 AA2 AE0 AE1 AE2 AH0 AH1 AH2 AO0 AO1 AO2 AW0 AW1 AW2 AY0 AY1 AY2 B CH D DH "
    "EH0 EH1 EH2 ER0 ER1 ER2 EY0 EY1 EY2 F G HH IH0 IH1 IH2 IY0 IY1 IY2 JH K L M N NG "
    "OW0 OW1 OW2 OY0 OY1 OY2 P R S SH T TH UH0 UH1 UH2 UW UW0 UW1 UW2 V W Y Z ZH".split())
_G_INDEX = {g: i for i, g in enumerate(GRAPHEMES)}
_UNK, _END = 1, 2          # grapheme ids
_START, _STOP = 2, 3       # phoneme ids
MAX_PHONES = 20

# english.py's corrections on top of homographs.en: (pron if POS matches, else, POS prefix).
_HOMOGRAPH_FIXES = {
    "read": (("R", "IY1", "D"), ("R", "EH1", "D"), "VBP"),
    "complex": (("K", "AH0", "M", "P", "L", "EH1", "K", "S"),
                ("K", "AA1", "M", "P", "L", "EH0", "K", "S"), "JJ"),
}

Homographs = dict[str, tuple[tuple[str, ...], tuple[str, ...], str]]


def package_directory() -> Path | None:
    """The installed ``g2p_en`` folder, found without importing it (its import downloads)."""
    spec = importlib.util.find_spec("g2p_en")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


class Guesser:
    """Greedy decoding of g2p_en's GRU seq2seq (weights in float32, like the original)."""

    def __init__(self, weights: dict[str, np.ndarray]):
        self.w = weights

    @classmethod
    def from_file(cls, path: Path) -> "Guesser":
        with np.load(path, allow_pickle=False) as data:
            return cls({k: data[k] for k in data.files})

    @staticmethod
    def _cell(x, h, w_ih, w_hh, b_ih, b_hh):
        gates_x = np.matmul(x, w_ih.T) + b_ih
        gates_h = np.matmul(h, w_hh.T) + b_hh
        split = gates_x.shape[-1] * 2 // 3
        reset_update = _sigmoid(gates_x[:, :split] + gates_h[:, :split])
        reset, update = np.split(reset_update, 2, -1)
        candidate = np.tanh(gates_x[:, split:] + reset * gates_h[:, split:])
        return (1 - update) * candidate + update * h

    def phones(self, word: str) -> list[str]:
        """Phones for a lower-case ``word``: letters outside a-z are read as ``<unk>``."""
        w = self.w
        ids = [_G_INDEX.get(ch, _UNK) for ch in word] + [_END]
        x = np.take(w["enc_emb"], np.expand_dims(ids, 0), axis=0)
        h = np.zeros((1, w["enc_w_hh"].shape[-1]), np.float32)
        for t in range(len(ids)):
            h = self._cell(x[:, t, :], h, w["enc_w_ih"], w["enc_w_hh"], w["enc_b_ih"], w["enc_b_hh"])
        h = h.astype(np.float32, copy=False)
        dec = np.take(w["dec_emb"], [_START], axis=0)
        out: list[str] = []
        for _ in range(MAX_PHONES):
            h = self._cell(dec, h, w["dec_w_ih"], w["dec_w_hh"], w["dec_b_ih"], w["dec_b_hh"])
            pred = int((np.matmul(h, w["fc_w"].T) + w["fc_b"]).argmax())
            if pred == _STOP:
                break
            out.append(PHONEMES[pred] if pred < len(PHONEMES) else "<unk>")
            dec = np.take(w["dec_emb"], [pred], axis=0)
        return out


def read_homographs(path: Path) -> Homographs:
    """``HEADWORD|PRON1|PRON2|POS`` lines (``#`` comments), plus english.py's two fixes."""
    table: Homographs = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            head, first, second, pos = line.strip().split("|")
            table[head.lower()] = (tuple(first.split()), tuple(second.split()), pos)
    table.update(_HOMOGRAPH_FIXES)
    return table


_lock = threading.Lock()
_loaded: tuple[Guesser | None, Homographs] | None = None


def load() -> tuple[Guesser | None, Homographs]:
    """(guesser or None, homographs) from the installed g2p_en, read once."""
    global _loaded
    if _loaded is None:
        with _lock:
            if _loaded is None:
                folder = package_directory()
                guesser, homographs = None, dict(_HOMOGRAPH_FIXES)
                if folder is not None and (folder / "checkpoint20.npz").is_file():
                    guesser = Guesser.from_file(folder / "checkpoint20.npz")
                if folder is not None and (folder / "homographs.en").is_file():
                    homographs = read_homographs(folder / "homographs.en")
                _loaded = (guesser, homographs)
    return _loaded

"""Toneless pinyin syllable -> (initial, final) v2 phone symbols.

Upstream GPT-SoVITS maps syllables through its ``opencpop-strict.txt`` table.  That table
follows a handful of spelling rules over the Mandarin syllable inventory, so this module
builds the same table from those rules instead of shipping (or needing) the file:

* the initial is the spelled consonant (``zh``/``ch``/``sh`` count as one); ``y`` and ``w``
  are kept as initials; a syllable that starts with a vowel gets the pseudo initial
  ``AA``/``EE``/``OO`` of its first letter;
* the final is the rest of the spelling, except that ``i`` after ``zh ch sh r`` is ``ir``,
  ``i`` after ``z c s`` is ``i0``, a written ``u`` after ``j q x y`` is ``v``, and after
  ``y`` the finals ``an``/``e`` are the open ``En``/``E``;
* ``j q x y`` also accept the explicit ``v`` spelling (``jv``, ``yvan``), and ``l n`` are
  written with ``v`` only (``lv``, ``nve``).

Which syllables exist is a fact of the language, written below per initial.
"""
from __future__ import annotations

# Finals shared by many initials, to keep the inventory readable.
_OPEN = "a ai an ang ao"
_MID = "e ei en eng"
_GKH = f"{_OPEN} {_MID} ong ou u ua uai uan uang ui un uo"
_JQX = "i ia ian iang iao ie in ing iong iu u uan ue un"
_ZCS = f"{_OPEN} {_MID} i ong ou u uan ui un uo"
_RETRO = f"{_OPEN} {_MID} i ong ou u ua uai uan uang ui un uo"

# Finals (as spelled) that each initial takes.  "" is the zero initial.
_INVENTORY: dict[str, str] = {
    "": f"{_OPEN} {_MID} er o ou",
    "b": f"{_OPEN} ei en eng i ian iao ie in ing o u",
    "p": f"{_OPEN} ei en eng i ian iao ie in ing o ou u",
    "m": f"{_OPEN} {_MID} i ian iao ie in ing iu o ou u",
    "f": "a an ang ei en eng o ou u",
    "d": f"{_OPEN} {_MID} i ia ian iao ie ing iu ong ou u uan ui un uo",
    "t": f"{_OPEN} e ei eng i ian iao ie ing ong ou u uan ui un uo",
    "n": f"{_OPEN} {_MID} i ian iang iao ie in ing iu ong ou u uan un uo v ve",
    "l": f"{_OPEN} e ei eng i ia ian iang iao ie in ing iu o ong ou u uan un uo v ve",
    "g": _GKH,
    "k": _GKH,
    "h": _GKH,
    "j": _JQX,
    "q": _JQX,
    "x": _JQX,
    "zh": _RETRO,
    "ch": _RETRO.replace(" ei ", " "),
    "sh": _RETRO.replace(" ong ", " "),
    "r": "an ang ao e en eng i ong ou u ua uan ui un uo",
    "z": _ZCS,
    "c": _ZCS,
    "s": _ZCS.replace(" ei ", " "),
    "y": "a an ang ao e i in ing o ong ou u uan ue un",
    "w": "a ai an ang ei en eng o u",
}

_VOWEL_INITIAL = {"a": "AA", "e": "EE", "o": "OO"}
_U_AS_V = {"u": "v", "uan": "van", "ue": "ve", "un": "vn"}
_Y_OPEN = {"an": "En", "e": "E"}


def _final_symbol(initial: str, final: str) -> str:
    """The v2 final symbol for a spelled final after ``initial``."""
    if final == "i" and initial in ("zh", "ch", "sh", "r"):
        return "ir"
    if final == "i" and initial in ("z", "c", "s"):
        return "i0"
    if initial in ("j", "q", "x", "y") and final in _U_AS_V:
        return _U_AS_V[final]
    if initial == "y" and final in _Y_OPEN:
        return _Y_OPEN[final]
    return final


def _build() -> dict[str, tuple[str, str]]:
    table: dict[str, tuple[str, str]] = {}
    for initial, finals in _INVENTORY.items():
        for final in finals.split():
            syllable = initial + final
            if initial:
                table[syllable] = (initial, _final_symbol(initial, final))
            else:
                table[syllable] = (_VOWEL_INITIAL[final[0]], final)
            if initial in ("j", "q", "x", "y") and final in _U_AS_V:
                # The same syllable written with an explicit v (jv, yvan).
                table[initial + "v" + final[1:]] = table[syllable]
    return table


PINYIN_TO_PHONES: dict[str, tuple[str, str]] = _build()


def syllable_phones(syllable: str) -> tuple[str, str]:
    """(initial, final) symbols of a toneless syllable such as ``"zhi"`` -> ``("zh", "ir")``."""
    try:
        return PINYIN_TO_PHONES[syllable]
    except KeyError:
        raise ValueError(f"pinyin syllable {syllable!r} is not in the v2 syllable table") from None

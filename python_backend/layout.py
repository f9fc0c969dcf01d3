"""Where things live in a gsv-triton model repository; shared by the exporter and the server.

REPO/
  voice_<NAME>/config.pbtxt       one Triton model per voice; versions are folders 1, 2, ...
  voice_<NAME>/<N>/manifest.json  graphs, reference.npz, golden.npz, model.py
  gsv_bert/, gsv_ssl/             shared auxiliary models, one copy for all voices
  gsv_sv/                         shared speaker verification (v2Pro/v2ProPlus), from --sv-model
  .gsv/staging/                   versions being written (renamed into place when complete)
  .gsv/quarantine/                versions refused at load, with the reason
  .gsv/retired/                   versions taken out of service by a rollback
  .gsv/routing.json               canary routing (voice -> active, canary, weight)
  .gsv/history.jsonl              what happened to every version, and why
  .gsv/text/g2pw/                 the user's G2PWModel folder (polyphones), shared by all voices
  .gsv/text/upstream/             upstream's text dictionaries (from GPT_SoVITS/text)
"""
from __future__ import annotations

import re
from pathlib import Path

VOICE_PREFIX = "voice_"
BERT_MODEL = "gsv_bert"
SSL_MODEL = "gsv_ssl"
SV_MODEL = "gsv_sv"
RESERVED = {"tts", "tts_stream", BERT_MODEL, SSL_MODEL, SV_MODEL}
STATE_DIR = ".gsv"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")


class LayoutError(ValueError):
    """A name or folder does not fit the repository layout."""


def check_voice_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise LayoutError(
            f"voice name {name!r} is not a safe folder name: use 1-63 letters, digits, '_' or '-', starting with a letter or digit"
        )
    return name


def voice_model(name: str) -> str:
    """Triton model name of a voice."""
    return VOICE_PREFIX + check_voice_name(name)


def voice_dir(repo: Path, name: str) -> Path:
    return Path(repo) / voice_model(name)


def staging_root(repo: Path) -> Path:
    return Path(repo) / STATE_DIR / "staging"


def quarantine_root(repo: Path) -> Path:
    return Path(repo) / STATE_DIR / "quarantine"


def retired_root(repo: Path) -> Path:
    return Path(repo) / STATE_DIR / "retired"


def text_root(repo: Path) -> Path:
    """Text front-end resources shared by every voice of the repository."""
    return Path(repo) / STATE_DIR / "text"


def g2pw_dir(repo: Path) -> Path:
    return text_root(repo) / "g2pw"


def upstream_text_dir(repo: Path) -> Path:
    return text_root(repo) / "upstream"


def routing_file(repo: Path) -> Path:
    return Path(repo) / STATE_DIR / "routing.json"


def version_numbers(model_dir: Path) -> list[int]:
    """Version folders present (digits only, as Triton reads them), ascending."""
    if not Path(model_dir).is_dir():
        return []
    return sorted(int(p.name) for p in Path(model_dir).iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0)


def parked_versions(root: Path, name: str) -> dict[int, list[Path]]:
    """Versions of voice ``name`` parked under ``root`` (quarantine or retired) as
    ``voice_<NAME>.<N>.<stamp>`` folders: number -> folders (a number can be parked twice)."""
    out: dict[int, list[Path]] = {}
    prefix = voice_model(name) + "."
    if Path(root).is_dir():
        for p in sorted(Path(root).iterdir()):
            head = p.name[len(prefix):].split(".")[0] if p.name.startswith(prefix) else ""
            if head.isdigit():
                out.setdefault(int(head), []).append(p)
    return out


def next_version(repo: Path, name: str) -> int:
    """One past every version number ever used by voice ``name`` (present, quarantined,
    retired), so a number never names two different versions."""
    used = version_numbers(voice_dir(repo, name))
    for root in (quarantine_root(repo), retired_root(repo)):
        used += list(parked_versions(root, name))
    return max(used, default=0) + 1


def voices(repo: Path) -> list[str]:
    repo = Path(repo)
    if not repo.is_dir():
        return []
    return sorted(p.name[len(VOICE_PREFIX):] for p in repo.iterdir() if p.is_dir() and p.name.startswith(VOICE_PREFIX))

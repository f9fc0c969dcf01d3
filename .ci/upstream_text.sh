#!/usr/bin/env bash
# Test data: upstream GPT-SoVITS's text dictionaries (GPT_SoVITS/text at upstream 48b1a01), for
# the text conformance tests. Users point --upstream-text at their own GPT-SoVITS checkout; CI
# has none, so it takes the same files from a PyPI wheel that vendors that folder
# (gpt-sovits-cpufast 0.1.0: every file below is byte-identical to upstream 48b1a01 except
# g2pw/polyphonic-fix.rep, which lacks upstream's last entry "唑"). Only data files are
# extracted, into the folder given as $1; nothing of the wheel is installed or imported.
set -euo pipefail
dest="$1"
[ -f "$dest/cmudict.rep" ] && exit 0
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
pip download -q --no-deps --only-binary=:all: -d "$tmp" gpt-sovits-cpufast==0.1.0
mkdir -p "$dest"
python3 - "$tmp"/gpt_sovits_cpufast-0.1.0-py3-none-any.whl "$dest" <<'PY'
import sys, zipfile, pathlib
wheel, dest = sys.argv[1], pathlib.Path(sys.argv[2])
files = ["cmudict.rep", "cmudict-fast.rep", "engdict-hot.rep", "namedict_cache.pickle",
         "opencpop-strict.txt", "g2pw/polyphonic.rep", "g2pw/polyphonic-fix.rep",
         "zh_normalization/char_convert.py"]
with zipfile.ZipFile(wheel) as z:
    for rel in files:
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(z.read("GPT_SoVITS/text/" + rel))
PY

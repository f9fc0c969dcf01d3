"""Text front-end time per 100-character sentence, per language mode (in-process).

The serving path (``frontend.sentences``) on sentences of about 100 characters, after one
warm-up call per mode (dictionaries, jieba, G2PW session); the median of several runs,
scaled to exactly 100 characters.  Modes whose packages are missing are reported as such.

    python -m bench.frontend [--g2pw DIR --vocab FILE]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

SAMPLES = {
    "all_zh": "国务院总理今天在北京主持召开常务会议，部署进一步扩大内需的政策措施，会议指出，要着力稳定就业和物价，"
              "长期坚持，还要把钱还给银行，他一边数一数手里的钱一边说：“这件事情我们明天再谈。”",
    "zh": "我们公司在2024年3月15日发布了新的iPhone应用，下载量超过了12,000次，用户评价达到4.8分，"
          "CEO说：This is only the beginning，我们还会继续努力，争取明年做得更好。",
    "en": "On March 15, 2024, the company released version 2.5 of its app; Dr. Smith said the NASA "
          "team will test it at 10:30 a.m. tomorrow.",
    "all_ja": "今日はとても良い天気ですね。明日は東京で会議があるので、朝早く起きなければなりません。"
              "駅まで歩いて十五分くらいかかります。",
    "all_ko": "오늘은 날씨가 정말 좋네요. 내일은 서울에서 회의가 있어서 아침 일찍 일어나야 합니다. "
              "역까지 걸어서 십오 분 정도 걸립니다.",
    "all_yue": "今日天氣好好，我哋去公園行下啦。聽日要返工，所以今晚唔好太夜瞓，記得食飯之前洗手呀，"
               "我哋下個禮拜再見。",
}


def measure(repeats: int = 5) -> dict:
    """{mode: {"ms_per_100_chars": float, "chars": int} or {"error": str}}."""
    from python_backend.text import frontend

    out = {"g2pw": frontend.status()["g2pw"]}
    for mode, text in SAMPLES.items():
        try:
            frontend.sentences(text, mode, max_chars=len(text))   # warm-up: loads dictionaries
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                frontend.sentences(text, mode, max_chars=len(text))
                times.append(time.perf_counter() - t)
            out[mode] = {"ms_per_100_chars": round(1000 * statistics.median(times) * 100 / len(text), 2),
                         "chars": len(text)}
        except Exception as exc:  # noqa: BLE001 - a missing optional package is a result, not a crash
            out[mode] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--g2pw", help="a G2PWModel folder (default: G2PW off)")
    p.add_argument("--vocab", help="the BERT vocab.txt G2PW tokenizes with")
    args = p.parse_args(argv)
    if args.g2pw:
        from python_backend.text import frontend

        frontend.configure(g2pw_dir=args.g2pw, vocab_file=args.vocab)
    print(json.dumps(measure(), ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

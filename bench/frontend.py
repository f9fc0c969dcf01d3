"""Text front-end time per 100-character sentence, per language mode (in-process).

The serving path (``frontend.sentences``) on three sentences of about 50-130 characters per
mode, each timed the first time it is seen (no per-word caches warm), after one warm-up
call per mode on another sentence (dictionaries, jieba, G2PW session); the median, scaled
to 100 characters.  Modes whose packages are missing are reported as such.

    python -m bench.frontend [--g2pw DIR --vocab FILE] [--out bench/results/frontend.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

WARMUP = {"all_zh": "你好，欢迎使用1次。", "zh": "你好，welcome 2 you。", "en": "Hello there, welcome 2 you.",
          "all_ja": "こんにちは。", "all_ko": "안녕하세요.", "all_yue": "你好。"}
SAMPLES = {
    "all_zh": ["国务院总理今天在北京主持召开常务会议，部署进一步扩大内需的政策措施，会议指出，要着力稳定就业和物价，"
               "长期坚持，还要把钱还给银行。",
               "他一边数一数手里的钱一边说：这件事情我们明天再谈，你先回去好好休息，长得很长的头发也该剪一剪了，"
               "背着书包的孩子们放学回家。",
               "2024年3月15日下午3点半，气温降到了零下5摄氏度，市民们纷纷穿上了厚厚的羽绒服，街上的行人比平时少了很多，"
               "商店也早早关门。"],
    "zh": ["我们公司在2024年3月15日发布了新的iPhone应用，下载量超过了12,000次，用户评价达到4.8分，CEO说这只是开始。",
           "这个API的response time大约是200毫秒，比上一个version快了很多，我们的team非常满意这个结果，下周继续优化。",
           "昨天晚上我用MacBook看了一部movie，讲的是一个AI机器人的故事，结局很感人，推荐大家有空的时候去看看。"],
    "en": ["On March 15, 2024, the company released version 2.5 of its app; the team will test it at ten tomorrow.",
           "Researchers at the university measured 37 samples over 12 weeks and found a 4.5 percent increase overall.",
           "She walked along the quiet river at dawn, counting the boats and listening to the birds above the water."],
    "all_ja": ["今日はとても良い天気ですね。明日は東京で会議があるので、朝早く起きなければなりません。駅まで歩いて十五分。",
               "新しい図書館は駅の近くにあり、週末には多くの家族が本を借りに来ます。子供向けのイベントも人気です。",
               "昨日の夜、友達と一緒にラーメンを食べに行きました。とても美味しかったので、また行きたいと思います。"],
    "all_ko": ["오늘은 날씨가 정말 좋네요. 내일은 서울에서 회의가 있어서 아침 일찍 일어나야 합니다. 역까지 걸어서 십오 분.",
               "새로 생긴 도서관은 역 근처에 있고 주말에는 많은 가족들이 책을 빌리러 옵니다. 아이들 행사도 인기가 많아요.",
               "어젯밤에 친구와 함께 라면을 먹으러 갔어요. 정말 맛있어서 다음에 또 가고 싶다고 생각했습니다."],
    "all_yue": ["今日天氣好好，我哋去公園行下啦。聽日要返工，所以今晚唔好太夜瞓，記得食飯之前洗手呀，我哋下個禮拜再見。",
                "呢間茶餐廳嘅奶茶好出名，每朝都有好多人排隊，老闆話佢哋用咗三十年嘅秘方，所以味道特別香滑。",
                "琴晚我同朋友去咗睇戲，套戲講一個機械人嘅故事，結局好感人，大家得閒可以去睇下，唔會失望。"],
}


def measure() -> dict:
    """{mode: {"ms_per_100_chars": float, "chars": int} or {"error": str}}."""
    from python_backend.text import frontend

    out = {"g2pw": frontend.status()["g2pw"]}
    for mode, texts in SAMPLES.items():
        try:
            frontend.sentences(WARMUP[mode], mode)          # loads the mode's packages and dictionaries
            per_100 = []
            for text in texts:                               # each sentence timed the first time it is seen
                t = time.perf_counter()
                frontend.sentences(text, mode, max_chars=len(text))
                per_100.append((time.perf_counter() - t) * 100 / len(text))
            out[mode] = {"ms_per_100_chars": round(1000 * statistics.median(per_100), 2),
                         "sentences": len(texts), "chars": [len(t) for t in texts]}
        except Exception as exc:  # noqa: BLE001 - a missing optional package is a result, not a crash
            out[mode] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
    return out


def main(argv: list[str] | None = None) -> int:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--g2pw", help="a G2PWModel folder (default: G2PW off)")
    p.add_argument("--vocab", help="the BERT vocab.txt G2PW tokenizes with")
    p.add_argument("--out", help="also write the figures, with the machine, to this JSON file")
    args = p.parse_args(argv)
    if args.g2pw:
        from python_backend.text import frontend

        frontend.configure(g2pw_dir=args.g2pw, vocab_file=args.vocab)
    result = measure()
    print(json.dumps(result, ensure_ascii=False, indent=1))
    if args.out:
        from bench.processes import machine

        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"machine": machine(), "command": "python -m bench.frontend " + " ".join(argv or []),
                       "frontend": result}, f, ensure_ascii=False, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

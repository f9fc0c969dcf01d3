"""What every part of the benchmark shares: the workload (texts, sampling) and the log line.

Every sentence is one sentence for the server (it splits at 。！？.!?), because ``MAX_TOKENS``
is a per-sentence budget: the same texts and budget go to every pipeline measured.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
REF_TEXT = "你好，欢迎使用语音合成服务。"
# one sentence each (the server splits at 。！？.!?): MAX_TOKENS is per sentence
TEXTS = {
    "zh_short": "今天天气很好。",
    "zh_medium": "今天天气很好，我们一起去公园散步吧，顺便买点水果回家。",
    "zh_long": "在这个阳光明媚的早晨，我们沿着河边慢慢地走着，一边聊天一边欣赏两岸美丽的风景和远处的青山。",
    "en_short": "Hello there, nice day.",
    "en_medium": "The weather is lovely today, so let us walk to the park together.",
    "en_long": "On this bright morning we walked slowly along the quiet river and talked about everything.",
}
LOAD_TEXT = TEXTS["zh_medium"]  # the text of the concurrency, swap and perf_analyzer requests
TOP_K = 15


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def pct(values, q: float) -> float | None:
    return float(np.percentile(np.asarray(values, float), q)) if len(values) else None

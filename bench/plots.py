"""The PNG plots: latency and throughput against concurrency, Triton beside the serial baseline."""
from __future__ import annotations

from pathlib import Path


def plots(res: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = res["baseline"]
    files = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, data in res["triton"].items():
        cs = [c["concurrency"] for c in data["concurrency"]]
        for q, style in (("p50", "-o"), ("p99", "--^")):
            ax.plot(cs, [c[f"{q}_s"] for c in data["concurrency"]], style, label=f"Triton {label} {q}")
    cs = [c["concurrency"] for c in res["triton"]["fp32"]["concurrency"]]
    ax.plot(cs, [base["service_s"] * c for c in cs], ":s", label="baseline (serial) p50≈p99")
    files.append(_save_plot(plt, fig, ax, out / "latency_vs_concurrency.png", "request latency (s)",
                            f"Latency vs concurrency ({res['tokens'] * 0.04:.0f} s audio/request)"))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, data in res["triton"].items():
        ax.plot([c["concurrency"] for c in data["concurrency"]], [c["throughput"] for c in data["concurrency"]],
                "-o", label=f"Triton {label}")
    ax.plot(cs, [base["throughput"]] * len(cs), ":s", label="baseline (eager torch, serial)")
    for peer in res.get("peers") or []:
        if "throughput" in peer:
            ax.plot(cs, [peer["throughput"].get(str(c)) for c in cs], "-.d",
                    label=f"{peer['name']} {peer['version']}{' (serial)' if peer.get('serial') else ''}")
    files.append(_save_plot(plt, fig, ax, out / "throughput_vs_concurrency.png", "audio seconds per wall second",
                            "Throughput vs concurrency"))
    return files


def _save_plot(plt, fig, ax, path: Path, ylabel: str, title: str) -> str:
    """The axes both plots share (concurrency on a log-2 x axis), written as PNG; returns the file name."""
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name

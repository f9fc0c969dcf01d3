"""Process accounting: the server's process tree, its memory, and the CPU other work took.

All of it from /proc, so the figures cover Triton's stub processes too (they are children of
tritonserver, not of this process).
"""
from __future__ import annotations

import os
import platform
from pathlib import Path


def process_tree(root_pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(p.name))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def proc_status(pid: int, key: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def stub_rss(server_pid: int, voice: str) -> dict[int, float]:
    """RSS (MiB) of each loaded version's stub process of ``voice_<voice>``."""
    out = {}
    for pid in process_tree(server_pid):
        line = cmdline(pid)
        if "triton_python_backend_stub" in line and f"voice_{voice}/" in line and "model.py" in line:
            try:
                version = int(line.split(f"voice_{voice}/", 1)[1].split("/", 1)[0])
            except ValueError:
                continue
            rss = proc_status(pid, "VmRSS")
            if rss is not None:
                out[version] = rss
    return out


def tree_memory(server_pid: int) -> dict:
    pids = process_tree(server_pid)
    return {"rss_mb": sum(proc_status(p, "VmRSS") or 0 for p in pids),
            "peak_mb_sum_of_hwm": sum(proc_status(p, "VmHWM") or 0 for p in pids), "processes": len(pids)}


def _own_cpu_ticks() -> int:
    """CPU ticks used by this process and every descendant (live ones directly; finished ones
    through their parents' cutime/cstime once reaped): the work this benchmark caused."""
    total = 0
    for pid in process_tree(os.getpid()):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total


def _busy_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine since boot, from /proc/stat."""
    cpu = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = cpu[3] + (cpu[4] if len(cpu) > 4 else 0)
    return sum(cpu[:8]) - idle, sum(cpu[:8])


class ForeignLoad:
    """Share of the machine's CPU used by processes outside this benchmark during a part.

    Load averages cannot tell the benchmark's own server from other work; this can: machine
    busy ticks minus the ticks of this process tree, over the part's wall time.
    """

    def __init__(self):
        self.start = (_busy_ticks(), _own_cpu_ticks())

    def share(self) -> float:
        (busy0, total0), own0 = self.start
        (busy1, total1), own1 = _busy_ticks(), _own_cpu_ticks()
        span = max(1, total1 - total0)
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / span


def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 1024 ** 2, 1)
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu_model": model, "gpu": "none", "memory_gib": mem_gib,
            "os": platform.platform(), "python": platform.python_version()}

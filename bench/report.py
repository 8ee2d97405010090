"""Shared by the benchmarks: the machine line and replacing one ``## `` section of bench/RESULTS.md."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import psutil


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = psutil.virtual_memory().total / 2**30
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, {platform.system()} {platform.release()}, no GPU"
    )


def write_section(out: Path, section: str) -> None:
    """Replace the section whose ``## `` title line matches ``section``'s first line, or append it."""
    title = section.splitlines()[0]
    text = out.read_text() if out.exists() else "# Benchmark results\n\n"
    section = section.rstrip("\n") + "\n"
    if title in text:
        head, _, rest = text.partition(title)
        nxt = rest.find("\n## ")
        text = head + section + ("\n" + rest[nxt + 1 :] if nxt >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    out.write_text(text)


def publish(section: str, out: Path | None) -> None:
    """Print a benchmark's section and, given ``out``, write it there (:func:`write_section`)."""
    print(section)
    if out is not None:
        write_section(out, section)

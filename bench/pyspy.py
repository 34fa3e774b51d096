"""Where the worker's time goes: py-spy samples of a running process, summed by frame."""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

from common import ROOT, VENV_BIN, log

PY_SPY = VENV_BIN / "py-spy"


def start(pid: int, seconds: float, output: Path) -> subprocess.Popen | None:
    """Sample `pid` for `seconds` without pausing it (`--nonblocking`) into collapsed stacks."""
    if not PY_SPY.exists():
        log(f"py-spy is missing ({PY_SPY}); install the bench extra: pip install -e '.[bench]'")
        return None
    return subprocess.Popen([str(PY_SPY), "record", "--nonblocking", "--rate", "50", "--format", "raw",
                             "--duration", str(int(seconds)), "--pid", str(pid), "--output", str(output)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish(process: subprocess.Popen | None, output: Path, top: int = 15) -> dict | None:
    """Wait for py-spy and sum its samples: by the frame that was running (self) and by the
    frames on the stack (inclusive), as shares of all samples."""
    if process is None:
        return None
    try:
        _, errors = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        _, errors = process.communicate()
    if not output.exists():
        log(f"py-spy wrote nothing: {errors.decode(errors='replace')[-500:]}")
        return None
    own: Counter = Counter()
    inclusive: Counter = Counter()
    total = 0
    for line in output.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        frames = [_short(frame) for frame in stack.split(";") if not frame.startswith("process ")
                  and not frame.startswith("thread ")]
        if not frames:
            continue
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    if not total:
        return None
    return {"samples": total,
            "self": [(frame, round(count / total, 4)) for frame, count in own.most_common(top)],
            "inclusive": [(frame, round(count / total, 4)) for frame, count in inclusive.most_common(top + 10)]}


def _short(frame: str) -> str:
    """`function (path/to/site-packages/pkg/mod.py:12)` -> `function (pkg/mod.py)`."""
    function, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", f"{ROOT}/", "/source/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{function} ({path})"

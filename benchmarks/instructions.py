"""Instructions per message of benchmarks/hotpath.py under valgrind (callgrind).

Time on a shared VM drifts by 2x within an hour; instruction counts repeat to about
0.3 %. Each shape runs twice, at two scales, and the difference is divided by the
difference in messages (or joins), so that start-up and imports cancel out:

    .venv/bin/python benchmarks/instructions.py                    # every shape
    .venv/bin/python benchmarks/instructions.py --shape seed --shape big
    .venv/bin/python benchmarks/instructions.py --json > before.json
    .venv/bin/python benchmarks/instructions.py --compare before.json

Needs ``valgrind`` on PATH (Debian: ``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHAPES = ("seed", "small", "big", "crowd", "joinstorm")
#: (low, high) --scale of hotpath.py per shape: large enough to dwarf noise, small
#: enough for valgrind (about 50x slower than native).
SCALES = {
    "seed": (0.05, 0.15),
    "small": (0.05, 0.15),
    "big": (0.05, 0.15),
    "crowd": (0.05, 0.15),
    "joinstorm": (0.05, 0.15),
}
_TOTAL = re.compile(r"^summary:\s+(\d+)", re.MULTILINE)


def _messages(shape: str, scale: float) -> int:
    """Messages (joins for joinstorm) one hotpath.py run of ``shape`` handles."""
    sys.path.insert(0, str(HERE))
    import hotpath

    members, rooms, per_read, reads = hotpath.SHAPES[shape]
    reads = max(1, round(reads * scale))
    if shape == "joinstorm":
        return reads * members
    if shape == "crowd":
        return reads * per_read
    step = 1 if members <= 2 else max(1, members // 10)
    senders = -(-members * rooms // step)  # hotpath.run: sessions[::step]
    return per_read * senders * reads


def _instructions(shape: str, scale: float) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                str(HERE / "hotpath.py"),
                "--shape",
                shape,
                "--repeat",
                "1",
                "--scale",
                str(scale),
            ],
            check=True,
            capture_output=True,
        )
        match = _TOTAL.search(out.read_text())
        if match is None:
            raise RuntimeError(f"no summary in callgrind's output for {shape}")
        return int(match.group(1))


def measure(shape: str) -> float:
    low, high = SCALES[shape]
    counts = [_instructions(shape, scale) for scale in (low, high)]
    messages = _messages(shape, high) - _messages(shape, low)
    return (counts[1] - counts[0]) / messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=SHAPES, action="append")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--compare", type=Path, help="a --json output to compare with")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not on PATH (Debian: apt-get install valgrind)")
    before = json.loads(args.compare.read_text()) if args.compare else {}
    results = {shape: measure(shape) for shape in args.shape or SHAPES}
    if args.json:
        print(json.dumps(results))
        return
    for shape, value in results.items():
        unit = "join" if shape == "joinstorm" else "message"
        line = f"{shape:10} {value:10.0f} instructions per {unit}"
        if shape in before:
            line += f"   (before {before[shape]:.0f}: {100 * (value / before[shape] - 1):+.1f} %)"
        print(line)


if __name__ == "__main__":
    main()

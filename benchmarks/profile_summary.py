"""A flame summary of a py-spy profile of SGLang's scheduler process: where its time goes.

    .venv/bin/pip install py-spy    # not a dependency: a measuring tool
    .venv/bin/py-spy record --pid SCHEDULER_PID --duration 60 --rate 50 --format raw \\
        --nonblocking --output sched.txt
    .venv/bin/python benchmarks/profile_summary.py sched.txt --out summary.txt

Prints (and writes) the share of samples inside the model's forward (``Scheduler.run_batch``)
and outside it, and of those outside it the share in our code (our hook around the forward is
not counted as ours), the inclusive share of the top frames, and the stacks outside the forward, ours
(``thunderagent_sglang``) marked, with their sample counts.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

FORWARD = "Scheduler.run_batch"
OURS = "thunderagent_sglang"


def frame_name(frame: str) -> str:
    """``func (path/to/file.py:LINE)`` -> ``func (file.py)``."""
    if " (" not in frame:
        return frame
    func, where = frame.split(" (", 1)
    return f"{func} ({where.split(':')[0].split('/')[-1]})"


def summarize(lines: list[str], top: int = 25) -> str:
    inclusive, outside = Counter(), Counter()
    total = ours = in_forward = 0
    for line in lines:
        if not line.strip():
            continue
        stack, count = line.rsplit(" ", 1)
        n = int(count)
        total += n
        in_forward += n if FORWARD in stack else 0
        ours += n if OURS in stack and FORWARD not in stack else 0  # not our hook around it
        frames = stack.split(";")
        for name in {frame_name(f) for f in frames}:
            inclusive[name] += n
        if FORWARD not in stack:
            mark = "[ours] " if OURS in stack else ""
            outside[mark + " > ".join(frame_name(f) for f in frames[-4:])] += n
    pct = lambda n: 100.0 * n / max(1, total)  # noqa: E731
    out = [f"samples: {total}; in the forward ({FORWARD}): {pct(in_forward):.1f}%; outside it: "
           f"{pct(total - in_forward):.2f}% (in thunderagent_sglang code: {pct(ours):.2f}%)",
           "", "inclusive share, top frames:"]
    out += [f"{pct(v):6.2f}%  {k}" for k, v in inclusive.most_common(top)]
    out += ["", "stacks outside the forward (innermost 4 frames), by samples:"]
    out += [f"{v:6d}  {k}" for k, v in outside.most_common(top)]
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("raw", type=Path, help="py-spy --format raw output")
    p.add_argument("--out", type=Path, help="also write the summary here")
    args = p.parse_args()
    text = summarize(args.raw.read_text().splitlines())
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()

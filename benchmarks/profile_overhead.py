"""py-spy profiles of the scheduler process under ``overhead.py``'s chat workload, per system.

    .venv/bin/pip install py-spy    # a measuring tool, not a dependency
    .venv/bin/python benchmarks/profile_overhead.py [plain ours ours-tagged]

For each system (``overhead.SYSTEMS``): start its server, warm up, run 8 workers x 12 chats
while py-spy records the scheduler for 30 s at 100 Hz, stop. Writes the raw profile and its
summary (``profile_summary.py``) to ``benchmarks/results/profile/overhead-<system>.txt``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead  # noqa: E402
from overhead import Server  # noqa: E402
from profile_summary import summarize  # noqa: E402

OUT = Path(__file__).parent / "results" / "profile"
PY_SPY = Path(sys.executable).parent / "py-spy"


def profile(name: str, work: Path) -> str:
    env, tagged = overhead.SYSTEMS[name]
    server = Server(name, [], env, work)
    try:
        server.wait_ready()
        words = overhead.corpus_words()
        overhead.run_workload(server, 1, 3, words, tagged)  # warm-up
        sched = overhead.scheduler_process(server)
        result: dict = {}
        runner = threading.Thread(target=lambda: result.update(
            overhead.run_workload(server, 2, 12, words, tagged)))
        runner.start()
        time.sleep(2)
        raw = work / "raw.txt"
        subprocess.run([str(PY_SPY), "record", "--pid", str(sched.pid), "--duration", "30",
                        "--rate", "100", "--format", "raw", "--nonblocking", "--output",
                        str(raw)], check=True, capture_output=True)
        runner.join()
    finally:
        server.stop()
    header = (f"# py-spy, scheduler of {name}, 30 s at 100 Hz from 2 s into "
              f"benchmarks/profile_overhead.py's workload: {result}\n")
    return header + summarize(raw.read_text().splitlines())


def main() -> None:
    names = sys.argv[1:] or list(overhead.SYSTEMS)
    OUT.mkdir(parents=True, exist_ok=True)
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"profile-{name}-") as work:
            text = profile(name, Path(work))
        (OUT / f"overhead-{name}.txt").write_text(text)
        print(text.splitlines()[0], text.splitlines()[1], sep="\n", flush=True)


if __name__ == "__main__":
    main()

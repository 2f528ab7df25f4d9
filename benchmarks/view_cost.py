"""What an open live view (GET /thunderagent/view) costs the server: serving throughput with
the page open in headless Chromium against the same load with no page, alternating phases in
one run.

    .venv/bin/python benchmarks/view_cost.py [--rounds 3] [--seconds 40] [--clients 4] \
        [--screenshot docs/view.png]

One of our servers (demo model, ``--api-key``) pinned to core 0 (``taskset``, one OpenMP
thread there); the load's clients and the browser on core 1, so the page's own drawing does
not take the server's CPU (in use the browser runs on someone's laptop): what is measured is
what serving the page's polls costs the server. Each phase runs ``--clients`` agents for
``--seconds``: sequential tagged calls of growing programs (a ~200-token turn, 16 output
tokens, a short tool pause), new programs as old ones end, so the page has programs,
pauses of nothing, events and releases to draw. Phases alternate no page / page open (the
order flips each round). Reports calls/s per phase, the ratio page/no page per round and
their median; saves benchmarks/results/view_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.integration.server import Server  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "view_cost.json"
KEY = "view-cost-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def agent(url: str, name: str, stop: threading.Event, done: list[int]) -> None:
    """Programs of 6 growing turns, one after another, until ``stop``."""
    rng = random.Random(name)
    session = requests.Session()
    program = 0
    while not stop.is_set():
        pid, context = f"{name}-{program}", []
        for _ in range(6):
            context = context + [rng.randrange(50, 1900) for _ in range(200)]
            response = session.post(f"{url}/generate", headers={**AUTH, "X-Program-Id": pid},
                                    timeout=300, json={"input_ids": context, "sampling_params": {
                                        "max_new_tokens": 16, "ignore_eos": True}})
            response.raise_for_status()
            context = context + response.json()["output_ids"]
            if stop.is_set():
                break
            done.append(1)
            time.sleep(0.05)  # the tool
        session.post(f"{url}/programs/{pid}/release", headers=AUTH, timeout=60)
        program += 1


def phase(url: str, clients: int, seconds: float, tag: str) -> float:
    stop, done = threading.Event(), []
    threads = [threading.Thread(target=agent, args=(url, f"{tag}-{i}", stop, done))
               for i in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return len(done) / seconds


def open_page(playwright, url: str, chromium: str):
    browser = playwright.chromium.launch(executable_path=chromium, headless=True,
                                         args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{url}/thunderagent/view")
    page.fill("#key", KEY)
    page.click("#keyform button")
    return browser, page


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=40.0)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--screenshot", default=None, help="save the page (with load) as a PNG")
    args = p.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("Chromium is missing (Debian: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    logs = Path("/tmp/view_cost")
    logs.mkdir(exist_ok=True)
    server = Server("view-cost", ["--api-key", KEY], {"SGLANG_CPU_OMP_THREADS_BIND": "0"},
                    logs, prefix=("taskset", "-c", "0"))
    try:
        server.wait_ready()
        os.sched_setaffinity(0, {1})  # clients and the browser (inherited) on core 1
        phase(server.url, args.clients, 10, "warm")
        rows = []
        with sync_playwright() as playwright:
            for round_no in range(args.rounds):
                order = ("off", "on") if round_no % 2 == 0 else ("on", "off")
                row = {"round": round_no}
                for mode in order:
                    browser = None
                    if mode == "on":
                        browser, page = open_page(playwright, server.url, chromium)
                    row[mode] = round(phase(server.url, args.clients, args.seconds,
                                            f"r{round_no}{mode}"), 3)
                    if browser is not None:
                        row["refreshes"] = page.evaluate("window.thunderagentRefreshes || 0")
                        row["last_refresh_ms"] = page.evaluate(
                            "window.thunderagentLastRefreshMs")
                        if args.screenshot and round_no == args.rounds - 1:
                            page.screenshot(path=args.screenshot, full_page=False)
                        browser.close()
                row["ratio"] = round(row["on"] / row["off"], 4)
                rows.append(row)
                print(f"round {round_no}: no page {row['off']:.2f} calls/s, page open "
                      f"{row['on']:.2f} calls/s, ratio {row['ratio']:.3f} "
                      f"({row['refreshes']} refreshes)", flush=True)
    finally:
        server.stop()
    ratio = statistics.median(r["ratio"] for r in rows)
    result = {"benchmark": "view_cost", "command": " ".join(sys.argv),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "clients": args.clients, "seconds": args.seconds, "rounds": rows,
              "median_ratio": ratio, "cost_pct": round((1 - ratio) * 100, 2)}
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(f"median throughput with the page open: {ratio:.3f}x of without "
          f"(cost {result['cost_pct']}%); saved {RESULTS}")


if __name__ == "__main__":
    main()

"""The warm server against the cold CLI, measured side by side in one run on these 2 cores.

A `simsearch serve` process over the demo index (the default model) takes uploads of the demo images from a
bounded loopback load (httpx, `--requests` at each concurrency): latency p50 / p99 and throughput at concurrency
1, 8 and 32, with batching (the default 5 ms window) and without (a window of 0, batches of one); beside them,
the wall time of a cold `simsearch query` of one image; the server's resident memory after the load; and, in
headless chromium, the page's time from picking an image to its results on screen (the page's screenshots and its
review timings are benchmarks/review_page.py's). Results are appended to `benchmarks/results/server_load.jsonl`.

    python benchmarks/server_load.py

With `--other CHECKOUT` (a git worktree of another commit) it measures this checkout's server beside that one's
instead, in rounds that alternate which goes first (the machines are shared and drift within minutes): the
batched server at each concurrency, each checkout serving an index it built itself; the median ratio is recorded
in `benchmarks/results/server_load_ab.jsonl`.

    git worktree add /tmp/before <commit>
    python benchmarks/server_load.py --other /tmp/before --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.index_throughput import git_commit  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "server_load.jsonl"
AB_RESULTS = REPO / "benchmarks" / "results" / "server_load_ab.jsonl"
CONCURRENCIES = (1, 8, 32)
API_HEADERS = {"X-Simsearch-Request": "1"}
"""What a client that is not the page sends with an upload (a server that does not ask for it ignores it)."""
IMAGES = sorted([*(REPO / "demo" / "photos").iterdir(), *(REPO / "demo" / "queries").iterdir()])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    """`simsearch serve` in a process of its own, ready when its readiness check says so."""

    def __init__(self, index: Path, window_ms: float, max_batch: int, checkout: Path = REPO) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", "--index", str(index), "--port", str(self.port),
             "--batch-window-ms", str(window_ms), "--max-batch", str(max_batch), "--max-in-flight", "256"],
            cwd=checkout, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/api/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise SystemExit("the server did not start")
            time.sleep(0.2)

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))) / 1024

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


async def load(url: str, concurrency: int, requests: int) -> dict[str, float]:
    payloads = [(image.name, image.read_bytes()) for image in IMAGES]
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            name, data = payloads[i % len(payloads)]
            started = time.perf_counter()
            answer = await client.post("/api/query", files={"image": (name, data)}, data={"k": "5"})
            if answer.status_code != 200:
                raise SystemExit(f"request failed: {answer.status_code} {answer.text}")
            latencies.append(time.perf_counter() - started)

    async with httpx.AsyncClient(base_url=url, timeout=120, headers=API_HEADERS) as client:
        await client.post("/api/query", files={"image": payloads[0]})  # the first batch warms the model
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    ordered = sorted(latencies)
    return {"p50_ms": round(1000 * statistics.median(ordered), 1),
            "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
            "per_s": round(len(ordered) / seconds, 1)}


def cold_query(index: Path, runs: int = 3) -> float:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cli", "query", str(IMAGES[-1]), "--index", str(index)], cwd=REPO,
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def page_seconds(url: str) -> float | None:
    """Seconds from picking an image on the page to its results on screen, in headless chromium (None without a
    browser)."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait
    except ImportError:
        return None
    if not (chromium and driver_path):
        return None
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update", "--window-size=1280,800",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        driver.get(url)
        started = time.perf_counter()
        driver.find_element(By.ID, "file").send_keys(str(REPO / "demo" / "queries" / "motorcycle_right.png"))
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results [data-image-id]"))
        return time.perf_counter() - started
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def build_index(checkout: Path, index: Path) -> None:
    """The demo photos and queries indexed by `checkout`'s own code."""
    subprocess.run([sys.executable, "-m", "cli", "index", str(REPO / "demo" / "photos"),
                    str(REPO / "demo" / "queries"), "--index", str(index)],
                   cwd=checkout, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def side_by_side(other: Path, requests: int, rounds: int) -> None:
    """This checkout's batched server beside `other`'s, rounds alternating which goes first."""
    checkouts = {"this": REPO, "other": other}
    per_s: dict[str, dict[int, list[float]]] = {name: {c: [] for c in CONCURRENCIES} for name in checkouts}
    with tempfile.TemporaryDirectory() as tmp:
        indexes = {name: Path(tmp) / name for name in checkouts}
        for name, checkout in checkouts.items():
            build_index(checkout, indexes[name])
        for round_ in range(rounds):
            for name in ("this", "other") if round_ % 2 == 0 else ("other", "this"):
                server = Server(indexes[name], 5.0, 32, checkouts[name])
                try:
                    for concurrency in CONCURRENCIES:
                        per_s[name][concurrency].append(asyncio.run(load(server.url, concurrency, requests))["per_s"])
                finally:
                    server.stop()
                print(f"{name:5s} " + "  ".join(f"c={c}: {per_s[name][c][-1]:5.1f}/s" for c in CONCURRENCIES),
                      flush=True)
    table = Table(title=f"`simsearch serve` requests/s, this checkout beside {git_commit(other)} "
                        f"(median of {rounds}, {requests} requests a run)")
    for column in ("concurrency", "this", "other", "this / other"):
        table.add_column(column, justify="right")
    ratios = {}
    for concurrency in CONCURRENCIES:
        this, that = (statistics.median(per_s[name][concurrency]) for name in ("this", "other"))
        ratios[str(concurrency)] = round(this / that, 3)
        table.add_row(str(concurrency), f"{this:.1f}", f"{that:.1f}", f"{this / that:.2f}")
    Console(width=140).print(table)
    record = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "this": git_commit(REPO),
              "other": git_commit(other), "requests": requests, "per_s": per_s, "ratio_this_over_other": ratios}
    with AB_RESULTS.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--other", type=Path, help="measure beside this checkout (a git worktree) instead")
    parser.add_argument("--rounds", type=int, default=3, help="with --other: runs of each, alternating")
    args = parser.parse_args()
    if args.other is not None:
        if not (args.other / "cli").is_dir():
            sys.exit(f"not a simsearch checkout: {args.other}")
        side_by_side(args.other, args.requests, args.rounds)
        return
    record: dict[str, object] = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                 "commit": git_commit(REPO), "requests": args.requests}
    with tempfile.TemporaryDirectory() as tmp:
        index = Path(tmp) / "index"
        build_index(REPO, index)
        table = Table(title=f"`simsearch serve`, default model, uploads of the demo images ({args.requests} a row)")
        for column in ("batching", "concurrency", "p50 ms", "p99 ms", "requests/s"):
            table.add_column(column, justify="right")
        loads: dict[str, dict[str, object]] = {}
        for name, window, batch in (("5 ms window, up to 32", 5.0, 32), ("none", 0.0, 1)):
            server = Server(index, window, batch)
            try:
                loads[name] = {str(c): asyncio.run(load(server.url, c, args.requests)) for c in CONCURRENCIES}
                loads[name]["rss_mb"] = round(server.rss_mb())
                if batch > 1:
                    record["page_seconds"] = page_seconds(server.url)
            finally:
                server.stop()
            for concurrency in ("1", "8", "32"):
                row = loads[name][concurrency]
                table.add_row(name, concurrency, f"{row['p50_ms']}", f"{row['p99_ms']}", f"{row['per_s']}")  # type: ignore[index]
        record["loads"] = loads
        record["cold_query_s"] = round(cold_query(index), 2)
    console = Console(width=140)
    console.print(table)
    batched, single = loads["5 ms window, up to 32"], loads["none"]
    console.print(f"cold `simsearch query` of one image: {record['cold_query_s']} s; the server's memory after the "
                  f"load: {batched['rss_mb']} MB; batching at concurrency 32: "
                  f"{batched['32']['per_s'] / single['32']['per_s']:.2f}x the requests/s; "  # type: ignore[index]
                  f"the page's time to first results: {record.get('page_seconds')} s")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()

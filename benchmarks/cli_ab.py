"""Cold `simsearch query` and `simsearch dedup`, wall and CPU time, of this checkout beside another (an older
commit).

Each command is a fresh process, as a user's shell runs it: the imports, opening the index, loading the model
(query) and the answer. Its CPU time (user and system, of the process and its children) is what the code costs
even when other work shares the cores; the wall time is what a user waits. Each checkout works on the demo
photos indexed by its own code (an index of another schema version is not shared), and the runs alternate which
checkout goes first, since the machines are shared and drift within minutes:

    git worktree add /tmp/before <commit>
    python benchmarks/cli_ab.py --other /tmp/before --rounds 5
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.index_throughput import git_commit  # noqa: E402
from benchmarks.results_file import append_result  # noqa: E402
from benchmarks.server_load import build_index  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "cli_ab.jsonl"
QUERY = REPO / "demo" / "queries" / "motorcycle_right.png"
COMMANDS = {"query": ["query", str(QUERY), "-k", "5"], "dedup": ["dedup", "--json"]}


def command_seconds(checkout: Path, index: Path, arguments: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of `simsearch ARGUMENTS --index INDEX` run by `checkout`'s code in a process of its
    own."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cli", *arguments, "--index", str(index)], cwd=checkout, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--other", type=Path, required=True, help="the other checkout (a git worktree)")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each command, alternating which goes first")
    args = parser.parse_args()
    if not (args.other / "cli").is_dir():
        sys.exit(f"not a simsearch checkout: {args.other}")
    checkouts = {"this": REPO, "other": args.other}
    measures = [(command, clock) for command in COMMANDS for clock in ("wall", "cpu")]
    seconds: dict[str, dict[str, list[float]]] = {f"{command} {clock}": {name: [] for name in checkouts}
                                                  for command, clock in measures}
    with tempfile.TemporaryDirectory() as tmp:
        indexes = {name: Path(tmp) / name for name in checkouts}
        for name, checkout in checkouts.items():
            build_index(checkout, indexes[name])
        for round_ in range(args.rounds):
            for name in ("this", "other") if round_ % 2 == 0 else ("other", "this"):
                for command, arguments in COMMANDS.items():
                    wall, cpu = command_seconds(checkouts[name], indexes[name], arguments)
                    seconds[f"{command} wall"][name].append(round(wall, 3))
                    seconds[f"{command} cpu"][name].append(round(cpu, 3))
                print(f"{name:5s} " + "  ".join(f"{measure} {seconds[measure][name][-1]:5.2f} s"
                                                for measure in seconds), flush=True)
    table = Table(title=f"cold CLI, this checkout ({git_commit(REPO)}) beside {git_commit(args.other)} "
                        f"(median of {args.rounds}, s)")
    for column in ("command", "seconds", "this", "other", "this / other"):
        table.add_column(column, justify="right")
    ratios = {}
    for (command, clock), measure in zip(measures, seconds):
        this, other = (statistics.median(seconds[measure][name]) for name in checkouts)
        ratios[measure] = round(this / other, 3)
        table.add_row(f"simsearch {command}", clock, f"{this:.2f}", f"{other:.2f}", f"{this / other:.2f}")
    Console(width=120).print(table)
    append_result(RESULTS, {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            "this": git_commit(REPO), "other": git_commit(args.other), "seconds": seconds,
                            "median_ratio_this_over_other": ratios})


if __name__ == "__main__":
    main()

"""The main job on a code base: bolt's embedded deployment beside one process doing the same work.

Each round runs, in turn, the single-process reference (bolt_tasks.job.direct_analysis, in a
fresh interpreter, timed around the computation alone) and the whole `bolt analyze PATH`
command (timed from exec to exit: interpreter start, the embedded redis-server and both pools
starting and stopping, all included). It checks that both give the same counts and prints the
medians and their ratio.

    python bench/main_job.py [PATH] [--rounds 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import psutil

COMPARED = ("files", "functions", "classes", "lines", "code_lines", "imports", "chunks")

DIRECT = """
import json, sys, time
from bolt_tasks.job import direct_analysis
from bolt_tasks.settings import Settings
report = direct_analysis(sys.argv[1], Settings.from_env())
json.dump(report, sys.stdout)
"""


def run_direct(root: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOLT_")}
    out = subprocess.run(
        [sys.executable, "-c", DIRECT, root], capture_output=True, text=True, check=True, env=env
    )
    return json.loads(out.stdout)


def run_bolt(root: str) -> tuple[float, dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOLT_")}
    with tempfile.TemporaryDirectory() as tmp:
        # An empty vector cache each round: a cached one would skip the embedding altogether.
        env["BOLT_CACHE_DIR"] = str(Path(tmp) / "cache")
        target = Path(tmp) / "report.json"
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "bolt_tasks.cli", "analyze", root, "--json", str(target)],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        wall_s = time.perf_counter() - started
        return wall_s, json.loads(target.read_text())


def machine() -> str:
    return (
        f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} CPUs, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path", nargs="?", default=sysconfig.get_paths()["stdlib"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    root = os.path.abspath(args.path)

    direct_s, bolt_s, bolt_job_s = [], [], []
    same = True
    for round_no in range(1, args.rounds + 1):
        direct = run_direct(root)
        wall_s, report = run_bolt(root)
        direct_s.append(direct["elapsed_s"])
        bolt_s.append(wall_s)
        bolt_job_s.append(report["elapsed_s"])
        matches = all(direct[k] == report[k] for k in COMPARED) and abs(
            direct["embedding_checksum"] - report["embedding_checksum"]
        ) <= 1e-6 * max(1.0, abs(direct["embedding_checksum"]))
        same &= matches
        print(
            f"round {round_no}: single process {direct['elapsed_s']:.2f} s, "
            f"bolt analyze {wall_s:.2f} s (job {report['elapsed_s']:.2f} s), "
            f"counts {'match' if matches else 'DIFFER'}"
        )

    results = {
        "path": root,
        "files": report["files"],
        "functions": report["functions"],
        "chunks": report["chunks"],
        "single_process_s": round(statistics.median(direct_s), 2),
        "bolt_command_s": round(statistics.median(bolt_s), 2),
        "bolt_job_s": round(statistics.median(bolt_job_s), 2),
        "counts_match": same,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    results["ratio"] = round(results["bolt_command_s"] / results["single_process_s"], 3)
    print(
        f"\n{root}: {results['files']} files, {results['functions']} functions, "
        f"{results['chunks']} chunks"
    )
    print(f"single process   {results['single_process_s']:7.2f} s")
    print(
        f"bolt analyze     {results['bolt_command_s']:7.2f} s  (ratio {results['ratio']:.2f}, "
        f"job alone {results['bolt_job_s']:.2f} s)"
    )
    print(f"counts match: {same}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

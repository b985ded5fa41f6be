"""Run the whole benchmark harness and write the report: what ``tox -e bench`` runs.

    python benchmarks/run.py                 # full run  -> benchmarks/RESULTS.md  (~10 min)
    python benchmarks/run.py --quick         # CI smoke  -> $TMPDIR/waypost-bench/RESULTS-quick.md (~1-2 min)
    python benchmarks/run.py --backends etcd,redis -- -k list   # a subset; args after -- go to pytest

Servers come from ``scripts/install-servers`` (run first; it is a no-op when
they are installed). Exit status: pytest's (the report is written regardless
when there is anything to report).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke mode: few rounds, small N, short windows")
    parser.add_argument("--backends", default="memory,file,etcd,redis")
    parser.add_argument("--output", help="report path (default: benchmarks/RESULTS.md, or a temp file with --quick)")
    parser.add_argument("--json-dir", help="where the run's JSON files go (default: a temp dir)")
    parser.add_argument("--no-install", action="store_true", help="do not run scripts/install-servers")
    parser.add_argument("--no-tooz", action="store_true")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args()

    tmp = Path(tempfile.gettempdir()) / "waypost-bench"
    json_dir = Path(args.json_dir) if args.json_dir else tmp
    json_dir.mkdir(parents=True, exist_ok=True)
    tag = "quick" if args.quick else "full"
    bench_json, metrics_json = json_dir / f"run-{tag}.json", json_dir / f"metrics-{tag}.json"
    for stale in (bench_json, metrics_json):
        stale.unlink(missing_ok=True)
    output = Path(args.output) if args.output else (tmp / "RESULTS-quick.md" if args.quick else BENCH / "RESULTS.md")

    installer = REPO / "scripts" / "install-servers"
    if not args.no_install and installer.exists():
        print(f"run: {installer}", flush=True)
        if subprocess.call(["bash", str(installer)], cwd=REPO) != 0:
            print("run: install-servers failed; backends without a server will be skipped", flush=True)

    cmd = [sys.executable, "-m", "pytest", str(BENCH), "-p", "no:cacheprovider", "-q", "-rs",
           f"--benchmark-json={bench_json}", f"--metrics-json={metrics_json}", f"--bench-backends={args.backends}",
           "--benchmark-columns=median,iqr,min,rounds", "--benchmark-sort=name"]
    if args.quick:
        cmd.append("--quick")
    if args.no_tooz:
        cmd.append("--no-tooz")
    cmd += args.pytest_args
    print("run: " + " ".join(cmd), flush=True)
    status = subprocess.call(cmd, cwd=REPO, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})

    inputs = [str(p) for p in (bench_json, metrics_json) if p.exists()]
    if not inputs:
        print("run: no results were written", flush=True)
        return status or 1
    command = "python benchmarks/run.py" + (" --quick" if args.quick else "")
    report = subprocess.call([sys.executable, str(BENCH / "report.py"), *inputs, "-o", str(output),
                              "--command", command])
    return status or report


if __name__ == "__main__":
    sys.exit(main())

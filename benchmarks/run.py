"""Run the whole benchmark harness and write the report: what ``tox -e bench`` runs.

    python benchmarks/run.py                 # full run  -> benchmarks/RESULTS.md  (~10 min)
    python benchmarks/run.py --quick         # CI smoke  -> $TMPDIR/waypost-bench/RESULTS-quick.md (~1-2 min)
    python benchmarks/run.py --backends etcd,redis -- -k list   # a subset; args after -- go to pytest

Consul's tooz peer (tooz 8.1 + python-consul2) is installed into its own
virtualenv (``$TMPDIR/tooz-consul-venv``, built on first use; ``--no-tooz``
skips it, ``--tooz-consul-python`` points at an existing one).

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
# tooz 9 dropped its Consul driver; tooz 8.1 needs python-consul2, whose `consul` package clashes with
# py-consul (waypost's): a throwaway virtualenv of its own, driven through _worker.py serve.
TOOZ_CONSUL_VENV = Path(tempfile.gettempdir()) / "tooz-consul-venv"
TOOZ_CONSUL_REQS = ["tooz>=8.1,<8.2", "python-consul2"]


def tooz_consul_env() -> str | None:
    """The python of the tooz 8.1 + python-consul2 virtualenv, built if missing; ``None`` if that fails."""
    python = TOOZ_CONSUL_VENV / "bin" / "python"
    probe = [str(python), "-W", "ignore", "-c", "import tooz.drivers.consul"]
    if python.exists() and subprocess.call(probe, stderr=subprocess.DEVNULL) == 0:
        return str(python)
    print(f"run: building {TOOZ_CONSUL_VENV} ({' '.join(TOOZ_CONSUL_REQS)})", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(TOOZ_CONSUL_VENV)], check=True, timeout=60)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        *TOOZ_CONSUL_REQS], check=True, timeout=120)
    except (subprocess.SubprocessError, OSError) as exc:
        print(f"run: no tooz environment for Consul ({exc}); tooz on Consul is not measured", flush=True)
        return None
    return str(python)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke mode: few rounds, small N, short windows")
    parser.add_argument("--backends", default="memory,file,etcd,redis,consul")
    parser.add_argument("--output", help="report path (default: benchmarks/RESULTS.md, or a temp file with --quick)")
    parser.add_argument("--json-dir", help="where the run's JSON files go (default: a temp dir)")
    parser.add_argument("--no-install", action="store_true", help="do not run scripts/install-servers")
    parser.add_argument("--no-tooz", action="store_true")
    parser.add_argument("--tooz-consul-python",
                        help="python of a virtualenv with tooz 8.1 + python-consul2 (default: build one in "
                             f"{TOOZ_CONSUL_VENV} when Consul is measured)")
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

    tooz_consul = args.tooz_consul_python
    if not tooz_consul and not args.no_tooz and "consul" in args.backends.split(","):
        tooz_consul = tooz_consul_env()

    cmd = [sys.executable, "-m", "pytest", str(BENCH), "-p", "no:cacheprovider", "-q", "-rs",
           f"--benchmark-json={bench_json}", f"--metrics-json={metrics_json}", f"--bench-backends={args.backends}",
           "--benchmark-columns=median,iqr,min,rounds", "--benchmark-sort=name"]
    if args.quick:
        cmd.append("--quick")
    if args.no_tooz:
        cmd.append("--no-tooz")
    if tooz_consul:
        cmd.append(f"--tooz-consul-python={tooz_consul}")
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

"""Turn one benchmark run into ``benchmarks/RESULTS.md``.

    python benchmarks/report.py RUN.json [METRICS.json] [-o benchmarks/RESULTS.md] [--command "..."]

``RUN.json`` is pytest-benchmark's ``--benchmark-json`` output (the harness adds
its own measurements and the environment to it); ``METRICS.json`` is the
harness's ``--metrics-json`` file (the same measurements, written even when no
pytest-benchmark timing ran). Every figure is a median (watch: p50 and p99);
ratios are waypost / raw client and waypost / tooz (below 1 = waypost cheaper).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

BACKENDS = ("memory", "file", "etcd", "redis")
IMPLS = ("waypost", "raw", "tooz")
FLAG_RATIO = 1.2
TOOZ_NOISE = 1.10  # "slower than tooz" is flagged beyond 10 %: crash detection etc. are ttl-bound and noisy


# Causes found by profiling (benchmarks/profile_ops.py); kept here so every report carries them.
EXPLANATIONS = (
    "**list (all backends), the bulk of the gap to raw**: decoding, not the store. `Runtime.list_instances` → "
    "`decode_items` → `decode_entry` → `Instance.from_json` → `Instance.from_dict` → `Instance.__init__`/"
    "`__post_init__` re-validates every name with the regexes (`validate_namespace`, `validate_segment`), converts "
    "enums through `Enum.__call__` (`_enum_or_none`), builds a `TransportType` and rebuilds the key to compare it "
    "(`Instance.key`): about 70 % of a list of 1 000 on etcd/Redis, ~2x the `json.loads` a raw user pays. Then "
    "`sorted()` uses `Instance.__lt__` (total_ordering), which formats `str()` of both sides on every comparison: "
    "with random ids, 10 000 instances take ~40 ms to sort vs ~3.4 ms with `sorted(key=str)`. Not inherent: "
    "memoize name validation, map enums with a dict, skip re-validation for store-decoded values, sort with a key.",
    "**list on file**: additionally `FileBackend._examine` builds a `pathlib.Path` per directory entry and "
    "`decode_name` runs a regex + `unquote_to_bytes` per file, and `FileBackend._read` uses `Path.read_bytes`: "
    "~57 % of a file list is the backend's own scan, vs `os.scandir` + `open` in the raw baseline.",
    "**register/unregister on memory and file** (µs-scale): `Runtime._unregister` rebuilds and re-validates the "
    "`Instance` (`Runtime._instance_for`) only to get its key; both paths call `notify()` (a pluggy hook call) "
    "even with no observer registered; the file backend's `create` checks its lease file (`_require_lease` → "
    "`_marker` builds a `Path` + `exists()` stat) and joins paths with pathlib. Not inherent.",
    "**register/unregister on Redis**: ~1/4 of the gap is server-side and inherent to the layout: the backend's "
    "Lua scripts check lease liveness and reap expired leases on every write (EVALSHA ~10 µs server time vs ~6 µs "
    "for the raw minimal script; 21 vs 16 commands per register+unregister); the rest is the core's Python "
    "overhead above (Instance construction twice, `notify`).",
    "**list on Redis/etcd slower than tooz at N ≥ 1 000**: tooz decodes msgpack capabilities into plain dicts "
    "(one `HGETALL`); waypost decodes JSON *and* builds validated `Instance` objects (the decoding cost above).",
    "**watch on file (vs raw and tooz)**: the floor is watchfiles' `step`: it yields a change about 1-2 steps "
    "after it happens, and `_FileWatch._inotify` (backends/file.py) passes `step=20` ms (raw here uses 5 ms: "
    "~10 ms; 1 ms gives ~2 ms). tooz polls every 10 ms in this harness. A tunable, not inherent.",
    "**list on file vs tooz**: tooz's file driver does `listdir` + `stat` + read + msgpack per member; waypost "
    "pays the backend scan costs above plus JSON decoding, `Instance` validation and the `str()`-based sort.",
    "**keepalive on file**: each refresh touches the lease file and every instance file and then reaps "
    "(`FileBackend.keep_alive` → `_reap_everything`: one `scandir`); tooz touches each member file under its "
    "driver lock (an `open` per group), so it is cheaper at E = 1 and 2x dearer at E = 100.",
    "**client memory on file**: the file watch also keeps every file's bytes and stat signature (`_Known` in "
    "backends/file.py, to re-read only changed files), ~600 B per instance on top of the decoded `Instance`.",
    "**keepalive vs tooz**: cadence — waypost refreshes every ttl/3 (design §5), tooz about every ttl/2: the "
    "same one request per refresh (etcd: one `LeaseKeepAlive`; Redis: one `EVALSHA`). On Redis the script also "
    "reaps expired leases (TIME, ZRANGEBYSCORE, ZSCORE, ZADD run inside it), hence ~5 server commands per "
    "refresh vs tooz's one `PSETEX` — inherent: Redis expires nothing itself in this design. None of it grows "
    "with the endpoint count, except on file, where liveness is each file's mtime (Dynamo's layout): every "
    "owner touches each of its files every ttl/3.",
)


def load(paths: list[str]) -> tuple[dict[tuple[Any, ...], dict[str, Any]], dict[str, Any], list[str]]:
    """Merge runs into {(op, backend, n, impl): {"value", "unit", "rounds", "note"}}."""
    table: dict[tuple[Any, ...], dict[str, Any]] = {}
    env: dict[str, Any] = {}
    notes: list[str] = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        for bench in data.get("benchmarks", []):
            info = bench.get("extra_info", {})
            if "op" not in info:
                continue
            key = (info["op"], info["backend"], info.get("n"), info["impl"])
            table[key] = {"value": bench["stats"]["median"], "unit": "s", "rounds": bench["stats"]["rounds"],
                          "note": ""}
        for m in data.get("waypost_metrics", []):
            key = (m["op"], m["backend"], m.get("n"), m["impl"])
            table[key] = {"value": m["value"], "unit": m["unit"], "rounds": len(m.get("samples") or []) or 1,
                          "note": m.get("note", "")}
        env = data.get("waypost_env") or env
        if not env.get("cpu") and data.get("machine_info"):
            env.setdefault("cpu", data["machine_info"].get("cpu", {}).get("brand_raw", "?"))
        for note in data.get("waypost_notes", []):
            if note not in notes:
                notes.append(note)
    return table, env, notes


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "s":
        if value < 1e-3:
            return f"{value * 1e6:.1f} µs"
        if value < 1:
            return f"{value * 1e3:.2f} ms"
        return f"{value:.3f} s"
    if unit == "B":
        return f"{value:,.0f} B"
    return f"{value:.2f} {unit}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return "—"
    if b == 0:
        return "—" if a == 0 else "∞"
    return f"{a / b:.2f}"


class Report:
    def __init__(self, table: dict[tuple[Any, ...], dict[str, Any]]) -> None:
        self.table = table
        self.flags: list[str] = []

    def get(self, op: str, backend: str, n: Any, impl: str) -> dict[str, Any] | None:
        return self.table.get((op, backend, n, impl))

    def value(self, op: str, backend: str, n: Any, impl: str) -> float | None:
        row = self.get(op, backend, n, impl)
        return None if row is None else float(row["value"])

    def rows(self, op: str, label: str, ns: list[Any], extra_cols: int = 0) -> list[str]:
        lines = []
        for backend in (*BACKENDS, "any"):
            for n in ns:
                w, r, t = (self.value(op, backend, n, impl) for impl in IMPLS)
                if w is None and r is None and t is None:
                    continue
                row = self.get(op, backend, n, "waypost") or self.get(op, backend, n, "raw") or {}
                unit = row.get("unit", "s")
                rounds = "/".join(str((self.get(op, backend, n, i) or {}).get("rounds", "—")) for i in IMPLS)
                lines.append(f"| {backend} | {'' if n is None else n} | {fmt(w, unit)} | {fmt(r, unit)} | "
                             f"{ratio(w, r)} | {fmt(t, unit)} | {ratio(w, t)} | {rounds} |")
                if op in ("register", "unregister", "list") and w is not None and r is not None and r > 0 \
                        and w / r > FLAG_RATIO:
                    self.flags.append(f"{label} on {backend}{'' if n is None else f' (N={n})'}: "
                                      f"waypost/raw = {w / r:.2f} (> {FLAG_RATIO})")
                if w is not None and t is not None and w > t * TOOZ_NOISE and op not in ("client_mem",):
                    self.flags.append(f"{label} on {backend}{'' if n is None else f' (N={n})'}: "
                                      f"waypost slower than tooz ({w / t:.2f}x)")
        return lines

    def section(self, title: str, op: str, label: str, ns: list[Any], intro: str, n_label: str = "N") -> list[str]:
        body = self.rows(op, label, ns)
        if not body:
            return [f"### {title}", "", intro, "", "_not measured in this run_", ""]
        return [f"### {title}", "", intro, "",
                f"| backend | {n_label} | waypost | raw | waypost/raw | tooz | waypost/tooz | samples w/r/t |",
                "|---|---|---|---|---|---|---|---|", *body, ""]


def render(table: dict[tuple[Any, ...], dict[str, Any]], env: dict[str, Any], notes: list[str],
           command: str) -> str:
    rep = Report(table)
    ns_list = sorted({k[2] for k in table if k[0] == "list" and k[2] is not None})
    ns_ka = sorted({k[2] for k in table if k[0] == "keepalive_ops" and k[2] is not None})
    pkgs = env.get("packages", {})
    srv = env.get("servers", {})
    out = [
        "# waypost benchmark results",
        "",
        f"Generated {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC by `benchmarks/report.py` from one run "
        f"({env.get('mode', '?')} mode) of `{command}`.",
        "All figures are **medians** over the samples of one run (watch: p50 and p99); the machine is shared "
        "and noisy, so compare ratios, not single timings. Register, unregister and list come from the "
        "interleaved pass (waypost, raw and tooz alternate round by round, so load drift hits all three alike; "
        "the contiguous pytest-benchmark timings are in the run's JSON). Ratios: waypost / raw client and "
        "waypost / tooz — below 1 means waypost is cheaper.",
        "",
        "## Machine and versions",
        "",
        f"- CPU: {env.get('cpu', '?')}, {env.get('cores', '?')} cores ({env.get('usable_cores', '?')} usable), "
        f"{env.get('machine', '?')}, Linux {env.get('kernel', '?')}",
        f"- Python {env.get('python', '?')}",
        "- Packages: " + ", ".join(f"{k} {v}" for k, v in pkgs.items()),
        "- Servers (on 127.0.0.1, started by `tests/servers.py`): " + "; ".join(f"{k}: {v}" for k, v in srv.items()),
        "- Consul: " + ("`waypost.backends.consul` exists but has not joined the harness yet: not measured."
                        if env.get("consul_backend") else "waypost has no Consul backend yet: not measured."),
        "",
        "## Results",
        "",
    ]
    out += rep.section("Register one endpoint (Runtime already holds its lease)", "register", "register", [None],
                       "waypost `Endpoint.register()` · raw: create-only put of the same key + JSON on an existing "
                       "lease · tooz: `join_group(group, capabilities)`.", n_label="")
    out += rep.section("Unregister it", "unregister", "unregister", [None],
                       "waypost `Registration.unregister()` · raw: delete · tooz: `leave_group()`.", n_label="")
    out += rep.section("List a component with N instances", "list", "list", ns_list,
                       "waypost `Component.list_instances()` (decoded, validated, sorted) · raw: one prefix read + "
                       "`json.loads` per value · tooz: `get_members_with_capabilities()` (one call).")
    out += rep.section("Watch propagation, p50 (register here → `Added` in another process)", "watch_p50",
                       "watch p50", [None],
                       "tooz has no push watch: `run_watchers()` is polled every 10 ms in the other process.",
                       n_label="")
    out += rep.section("Watch propagation, p99", "watch_p99", "watch p99", [None], "", n_label="")
    out += rep.section("Crash detection (SIGKILL → `Removed` elsewhere, ttl = 2 s)", "crash_detect",
                       "crash detection", [None],
                       "raw exists only where the store expires keys itself (etcd leases); on Redis and file "
                       "liveness is the backend's own scheme (reaping on reads), on memory there is no other "
                       "process.", n_label="")
    out += rep.section("Keepalive cost (store operations per second, ttl = 2 s)", "keepalive_ops", "keepalive",
                       ns_ka,
                       "E = endpoints registered in the Runtime. etcd: gRPC requests received by the server; Redis: "
                       "commands executed by the server (inside Lua scripts too); file: filesystem calls (audit "
                       "hook); memory: backend calls. Must not grow with E — except on file, whose layout keeps "
                       "liveness per file (mtime), so every owner touches each of its files. Cadence differs: "
                       "waypost keeps alive every ttl/3 (design §5), tooz heartbeats about every ttl/2, raw here "
                       "every ttl/3.", n_label="E")
    out += rep.section("Keepalive: Redis client round trips per second", "keepalive_req", "keepalive requests",
                       ns_ka, "One waypost keepalive is one `EVALSHA` (a Lua script that also reaps expired "
                       "leases, hence several server commands above); tooz's is one `PSETEX`.", n_label="E")
    out += rep.section("Keepalive: waypost backend (SPI) calls per second", "keepalive_spi", "keepalive SPI",
                       ns_ka, "How often the Runtime calls the backend at all (one `keep_alive` per ttl/3).",
                       n_label="E")
    out += rep.section("`import` time (fresh interpreter, `-X importtime`, cumulative)", "import", "import",
                       [None], "waypost: `import waypost` (backends load lazily) · raw: the client library "
                       "(`pyetcd`, `redis`) · tooz: `import tooz.coordination`.", n_label="")
    out += rep.section("Memory per instance held by a `Client` (N = 1 000, tracemalloc)", "client_mem",
                       "client memory", sorted({k[2] for k in table if k[0] == "client_mem"}),
                       "waypost: `Endpoint.client()` after it has seen all N · raw: dict of key → parsed JSON · "
                       "tooz: the `get_members_with_capabilities()` result.")
    out += ["## Flags (issue 6: ratio to raw > 1.2 for register/list, or slower than tooz by > 10 %)", ""]
    out += [f"- {f}" for f in rep.flags] or ["- none"]
    out += ["", "## Why (profiled with `benchmarks/profile_ops.py`, pyinstrument)", ""]
    out += [f"- {text}" for text in EXPLANATIONS]
    out += ["", "## Notes", ""]
    out += [f"- {n}" for n in notes] or ["- none"]
    out += ["", "See `benchmarks/README.md` for what each figure measures and how to run the harness.", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="+", help="pytest-benchmark JSON (and optionally the --metrics-json file)")
    parser.add_argument("-o", "--output", default=str(Path(__file__).with_name("RESULTS.md")))
    parser.add_argument("--command", default="tox -e bench")
    args = parser.parse_args(argv)
    table, env, notes = load(args.json)
    if not table:
        print("report: no measurements found in " + ", ".join(args.json), file=sys.stderr)
        return 1
    Path(args.output).write_text(render(table, env, notes, args.command))
    print(f"report: wrote {args.output} ({len(table)} figures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

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

BACKENDS = ("memory", "file", "etcd", "redis", "consul")
IMPLS = ("waypost", "raw", "tooz")
FLAG_RATIO = 1.2
TOOZ_NOISE = 1.10  # "slower than tooz" is flagged beyond 10 %: crash detection etc. are ttl-bound and noisy


# Causes found by profiling (benchmarks/profile_ops.py + timeit of the pieces, on the code named under
# "Code measured"); kept here so every report carries them. Update them when the code or the figures move.
EXPLANATIONS = (
    "**list, every backend: the codec is not the cost any more.** Since the msgspec codec (`decode_batch` in "
    "core/_instance.py: one C call decodes and type-checks each value into a frozen `Instance` Struct; names are "
    "looked up in sets of names already validated, and the key is compared with one f-string) a decoded "
    "instance costs less than raw's `json.loads` into a dict; `decode_batch` is ~10 % of a file list of "
    "10 000 and the sort by `str` ~1.5 %. What is left of a list is the store's read.",
    "**list on file (the one list goal at the edge)**: pyinstrument on a list of 10 000 (benchmarks/profile_ops.py "
    "list --backend file --n 10000): `FileBackend._scan` ~50 % (per entry: `decode_name` — the canonical-name "
    "regex, plus `%XX` decoding when a name holds more than separators —, and an `lstat` through the store's "
    "directory descriptor, which tells a stale or foreign file from a live one before anything is opened), "
    "`_Dir.read` ~35 % (`open` with `O_NOFOLLOW|O_NONBLOCK`, `fstat` of the descriptor — regular file, this "
    "user's, at most `MAX_VALUE_BYTES` —, one `read`, `close`), decoding ~10 %. Raw does `scandir` + `open` + "
    "`read`. The extra `lstat` + `fstat` per file (~5 µs each on this VM) are the trust checks of "
    "docs/security.md: inherent. Two costs found here are gone (this commit): a second `read` to meet the end "
    "of every file, and the byte round trip of `decode_name` for names whose only escapes are `%2F`.",
    "**list on Consul** (0.95 in the full run of 81c0916; goal 0.8): pyinstrument on a list of 10 000 put 43 % "
    "in the HTTP read (`requests`, shared with raw), 36 % in decoding Consul's reply in Python (`json.loads` "
    "of the ~3 MB body, then a `base64.b64decode` per value: 0.69 s of 2.74) and 16 % in `decode_batch`. "
    "Fixed after that run: the reply is decoded by one msgspec call into `_KV` Structs (base64 decoded in "
    "C; anything unusual falls back to the lenient path, which skips bad entries one by one). "
    "profile_ops.py list --backend consul --n 10000 --compare: 0.82 before, 0.67 after, on the same machine "
    "minutes apart. The table above still shows the run's 0.95.",
    "**register on Consul** (1.06-1.21 across runs): one `/v1/txn` (check-not-exists + lock with the session), "
    "exactly raw's request; an unloaded profile run measured 1.03, with 98 % of a register+unregister inside "
    "py-consul's `HTTPClient.put`. The rest is run-to-run noise of a 3-6 ms Raft write on a shared machine.",
    "**register on etcd** (waypost/raw ≈ 1.0-1.2): one `Txn` (create-only compare + put with the lease), "
    "exactly raw's request; pyinstrument puts 90 % of a register+unregister in grpc's `_blocking` call, the "
    "core's `Runtime._register_once` → `Instance` build + `to_json` ~4 %, `notify` and the registration "
    "bookkeeping the rest. The gap that the report shows beyond that is the noise of a shared 2-core machine "
    "(an unloaded profile run measured 1.04).",
    "**register on Redis** (≈ 1.3-1.4): the scripts do more work inside Redis. `INFO commandstats` over 1 000 "
    "register+unregister pairs: waypost's two `EVALSHA` take 112 µs of server time per pair against 44.5 µs "
    "for raw's minimal scripts, running 27 commands against 16: `TIME` and `ZRANGEBYSCORE` (reap expired "
    "leases: Redis expires nothing itself in this design), `ZSCORE` (the lease is alive), `HGET` x 8 (the "
    "grant's token, the owner of the key, and the write count that detects writes lost in a fail-over, issue "
    "14), `HSET` x 4. Client side, pyinstrument puts 92 % of a register in redis-py's `evalsha` round trip and "
    "~5 % in the core. Inherent to server-side leases, ownership and lost-write detection.",
    "**register on file** (≈ 2.3-2.8): per register+unregister the backend checks, before touching anything, "
    "that every store directory it uses is still the one it opened and trusted (`_Tree.using` → "
    "`_Tree._still_valid`: an `lstat` of the path and an `fstat` of the descriptor per directory, ~25 % of a "
    "register, issue 9 item 1), that the lease file is still this Runtime's (`_require_lease`, ~12 %), and "
    "keeps the written file's descriptor to tell it apart from a later file of the same name; the `open` of "
    "the temp file itself is ~35 %, as for raw. Raw does `open`, `write`, `link`, `unlink` by path. The "
    "checks are what makes `delete` never touch a file it did not write: inherent to the trust model.",
    "**watch propagation, every backend: one thread hand-off.** `benchmarks/profile_ops.py watch` timestamps "
    "each stage in the watcher (medians of 200 changes, this machine, idle): etcd — the change reaches the "
    "backend's watch thread (`WatchLoop.put`) 2.59 ms after the register began vs raw's callback at 2.46 ms "
    "(raw's register call is itself 0.09 ms shorter); `InstanceView.put` (decode, diff, queue) 146 µs; the "
    "consumer's `Watch.get` has it 119 µs later. Redis: 122 µs and 199 µs. Decoding is not it: "
    "`InstanceView.put` + `delete` cost 12 µs with nobody waiting. The cost is waking the consumer's thread: "
    "on this VM a bare `Condition.notify` to a waiting thread takes 52 µs and `SimpleQueue.put` 20 µs, and the "
    "woken thread's contention for the GIL makes the notifying `put` take ~130 µs (reproduced in isolation). "
    "Raw's figure is its own callback, inside the client's thread; waypost hands every event to the caller's "
    "thread (that is its API: `for event in watch`), so one wake-up is inherent, and ≤ raw + 0.1 ms is not "
    "reachable with a thread hand-off on this machine.",
    "**watch on Consul**: the same hand-off, plus the feed: one blocking query per prefix per process fans each "
    "answer out to the watches' own threads (a second hand-off), and each answer is the whole prefix, "
    "base64-decoded and diffed (`InstanceView.reset` re-decodes only changed values).",
    "**watch on file**: the backend's inotify thread wakes on `IN_CREATE`/`IN_MOVED_TO`, re-reads only the named "
    "file, checks it as a list does (`lstat`, `open` `O_NOFOLLOW`, `fstat`), then the same hand-off; raw's "
    "callback fires on the inotify event itself, before reading anything. So on file the ratio compares a "
    "validated value in the caller's thread with a bare notification.",
    "**import waypost** (≈ 90-100 ms here with bytecode cached, 0.3-0.4x `import tooz.coordination`): "
    "`python -X importtime`: msgspec 33 ms (it imports `typing_extensions` and `inspect`), `typing` 18 ms, "
    "`logging` 12 ms, waypost's own modules ~15 ms. `Instance` is a msgspec Struct, so the codec of item 1 "
    "and ≤ 50 ms exclude each other on this machine; pluggy, dataclasses, `urllib.parse`, the kit, "
    "`importlib.metadata`, the CLI and asyncio load only on first use (tests/test_import_footprint.py).",
    "**tooz on Consul** (tooz 8.1): `join_group` takes a group lock (a session `acquire` PUT and a GET before, "
    "a `release` PUT and a GET after), reads the whole group recursively and writes the member: ~6 HTTP requests; "
    "its list is N + 1 requests (no `get_members_with_capabilities`).",
    "**crash detection on Consul (~4.0 s at ttl = 2 s, waypost = raw)**: Consul invalidates a session 2 x TTL "
    "after its last renewal; the kill here comes right after the session was created, so the full 2 x TTL. "
    "A Consul property: the backend renews every ttl/3 like the others, and its docstring states the bound.",
    "**keepalive vs tooz**: cadence — waypost refreshes every ttl/3 (design §5), tooz about every ttl/2: the "
    "same one request per refresh (etcd: one `LeaseKeepAlive`; Redis: one `EVALSHA`; Consul: one "
    "`session/renew`). On Redis the script also reaps expired leases, checks the grant token and the write "
    "count, hence several server commands per refresh vs tooz's one `PSETEX` — inherent: Redis expires "
    "nothing itself in this design. None of it grows with the endpoint count, except on file, where liveness "
    "is each file's mtime (Dynamo's layout).",
)


def consul_line(env: dict[str, Any]) -> str:
    if not env.get("consul_backend"):
        return "waypost has no Consul backend: not measured."
    tc = env.get("tooz_consul") or {}
    tooz = (f"tooz on Consul = tooz {tc.get('tooz', '?')} + python-consul2 {tc.get('python-consul2', '?')} in a "
            "separate virtualenv (tooz 9 dropped its Consul driver; python-consul2 and py-consul are both the "
            "`consul` package), driven through `_worker.py serve` and timed inside that process"
            if tc else "tooz on Consul not measured (see the notes)")
    server = env.get("servers", {}).get("consul", "?")
    return f"`consul://` backend on a `-dev` agent with `session_ttl_min = \"1s\"` ({server}); raw = py-consul; {tooz}."


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


# ---------------------------------------------------------------------------
# headline: the goals of issue 12, measured in the same run
# ---------------------------------------------------------------------------

MET, NOT_MET, UNKNOWN = "met", "**not met**", "not measured"


def _verdict(ok: bool | None) -> str:
    return UNKNOWN if ok is None else (MET if ok else NOT_MET)


def _mb(value: float | None) -> str:
    return "—" if value is None else f"{value / 1e6:.1f} MB"


class Headline:
    """The goal rows (issue 12): waypost against raw and tooz, the import budget, linear scaling."""

    LIST_BACKENDS = ("etcd", "redis", "file", "consul")
    REGISTER_GOALS = (("etcd", 1.1), ("redis", 1.1), ("consul", 1.1), ("file", 1.5))
    WATCH_GOALS = (("etcd", "abs", 0.1e-3), ("redis", "abs", 0.1e-3), ("consul", "abs", 0.5e-3), ("file", "rel", 1.2))
    SCALING_BACKENDS = ("etcd", "redis")
    SCALING_NS = (1000, 10000, 100000)

    def __init__(self, rep: Report, list_ns: list[int]) -> None:
        self.rep = rep
        self.list_ns = list_ns
        self.rows: list[str] = []
        self.missed: list[str] = []

    def add(self, what: str, backend: str, waypost: str, baseline: str, measured: str, goal: str,
            ok: bool | None) -> None:
        verdict = _verdict(ok)
        self.rows.append(f"| {what} | {backend} | {waypost} | {baseline} | {measured} | {goal} | {verdict} |")
        if ok is False:
            self.missed.append(f"{what} on {backend}: {measured} (goal {goal})")

    def list_rows(self) -> None:
        v = self.rep.value
        for backend in self.LIST_BACKENDS:
            n = 10000
            if v("list", backend, n, "waypost") is None:  # quick mode: the largest N measured stands in
                smaller = [m for m in self.list_ns if m < n and v("list", backend, m, "waypost") is not None]
                n = max(smaller) if smaller else n
            w, r = v("list", backend, n, "waypost"), v("list", backend, n, "raw")
            what = "list 10 000, waypost / raw" + ("" if n == 10000 else f" (N = {n:,} here: quick mode)")
            self.add(what, backend, fmt(w, "s"), f"raw {fmt(r, 's')}", ratio(w, r), "≤ 0.8",
                     None if w is None or r is None else w / r <= 0.8)
        w, t = v("list", "redis", 1000, "waypost"), v("list", "redis", 1000, "tooz")
        self.add("list 1 000, waypost / tooz (untyped msgpack dicts)", "redis", fmt(w, "s"), f"tooz {fmt(t, 's')}",
                 ratio(w, t), "≤ 1.0", None if w is None or t is None else w / t <= 1.0)

    def register_rows(self) -> None:
        v = self.rep.value
        for backend, goal in self.REGISTER_GOALS:
            w, r = v("register", backend, None, "waypost"), v("register", backend, None, "raw")
            self.add("register, waypost / raw", backend, fmt(w, "s"), f"raw {fmt(r, 's')}", ratio(w, r),
                     f"≤ {goal}", None if w is None or r is None else w / r <= goal)

    def watch_rows(self) -> None:
        v = self.rep.value
        for backend, kind, goal in self.WATCH_GOALS:
            w, r = v("watch_p50", backend, None, "waypost"), v("watch_p50", backend, None, "raw")
            if kind == "abs":
                measured = "—" if w is None or r is None else f"raw {(w - r) * 1e3:+.3f} ms"
                self.add("watch propagation p50", backend, fmt(w, "s"), f"raw {fmt(r, 's')}", measured,
                         f"≤ raw + {goal * 1e3:g} ms", None if w is None or r is None else w - r <= goal)
            else:
                self.add("watch propagation p50, waypost / raw", backend, fmt(w, "s"), f"raw {fmt(r, 's')}",
                         ratio(w, r), f"≤ {goal}x raw", None if w is None or r is None else w / r <= goal)

    def import_rows(self) -> None:
        v = self.rep.value
        w, t = v("import", "any", None, "waypost"), v("import", "any", None, "tooz")
        self.add("import waypost (fresh interpreter, bytecode cached)", "—", fmt(w, "s"), "—", fmt(w, "s"),
                 "≤ 50 ms", None if w is None else w <= 0.050)
        self.add("import waypost / import tooz.coordination", "—", fmt(w, "s"), f"tooz {fmt(t, 's')}",
                 ratio(w, t), "≤ 0.6", None if w is None or t is None else w / t <= 0.6)

    def scaling_rows(self) -> None:
        v = self.rep.value
        for backend in self.SCALING_BACKENDS:
            ratios = {}
            for n in self.SCALING_NS:
                w, r = v("list", backend, n, "waypost"), v("list", backend, n, "raw")
                if w is not None and r is not None and r > 0:
                    ratios[n] = w / r
            if not ratios:
                self.add("list scaling, waypost / raw at 1k / 10k / 100k", backend, "—", "—", "—",
                         "100k ≤ 1k, every size ≤ 0.8", None)
                continue
            shown = " / ".join(f"{ratios[n]:.2f}" if n in ratios else "—" for n in self.SCALING_NS)
            every = all(x <= 0.8 for x in ratios.values())
            linear = ratios[100000] <= ratios[1000] if 100000 in ratios and 1000 in ratios else None
            ok = None if linear is None else (linear and every)
            self.add("list scaling, waypost / raw at 1k / 10k / 100k", backend, "—", "—", shown,
                     "100k ≤ 1k, every size ≤ 0.8", ok)
        for backend in self.SCALING_BACKENDS:
            w, r = v("list", backend, 100000, "waypost"), v("list", backend, 100000, "raw")
            if w is None and r is None:
                continue
            wm, rm = v("list_rss", backend, 100000, "waypost"), v("list_rss", backend, 100000, "raw")
            wp, rp = v("list_pymem", backend, 100000, "waypost"), v("list_pymem", backend, 100000, "raw")
            self.add("list 100 000: time", backend, fmt(w, "s"), f"raw {fmt(r, 's')}", ratio(w, r),
                     "≤ 0.8 (as above)", None if w is None or r is None else w / r <= 0.8)
            self.rows.append(f"| list 100 000: peak RSS / tracemalloc peak of the call | {backend} | "
                             f"{_mb(wm)} / {_mb(wp)} | raw {_mb(rm)} / {_mb(rp)} | {ratio(wm, rm)} / "
                             f"{ratio(wp, rp)} | (regression watch) | — |")

    def render(self) -> list[str]:
        self.list_rows()
        self.register_rows()
        self.watch_rows()
        self.import_rows()
        self.scaling_rows()
        out = ["## Headline: the goals of issue 12 (one run; waypost, raw and tooz side by side)", "",
               "Ratios are waypost / baseline (below 1 = waypost cheaper); every figure is a median of this run.",
               "", "| | backend | waypost | baseline | measured | goal | verdict |", "|---|---|---|---|---|---|---|",
               *self.rows, ""]
        met = sum(1 for row in self.rows if row.endswith(f"| {MET} |"))
        judged = sum(1 for row in self.rows if row.endswith((f"| {MET} |", f"| {NOT_MET} |")))
        out.append(f"**{met} of {judged} goals met.**" + (" Missed: " + "; ".join(self.missed) + "."
                                                            if self.missed else ""))
        out.append("")
        return out


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
        "- Load average (1/5/15 min) at the start and the end of the run: "
        + " → ".join("/".join(f"{x:g}" for x in (env.get("load") or {}).get(k) or ()) or "?" for k in ("start", "end"))
        + f" ({env.get('cores', '?')} cores; other jobs shared the machine)",
        f"- Code measured: {env.get('code', '?')}",
        "- Packages: " + ", ".join(f"{k} {v}" for k, v in pkgs.items()),
        "- Servers (on 127.0.0.1, started by `tests/servers/`): " + "; ".join(f"{k}: {v}" for k, v in srv.items()),
        "- Consul: " + consul_line(env),
        "",
    ]
    at = out.index("## Machine and versions")
    out[at:at] = Headline(rep, ns_list).render()  # right after the introduction, before the machine details
    out += [
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
                       "`json.loads` per value · tooz: `get_members_with_capabilities()` (one call; Consul: tooz 8.1 "
                       "has no such call, so `get_members` + one `get_member_capabilities` per member, N + 1 HTTP "
                       "requests, all submitted to tooz's executor before the first result is awaited).")
    out += rep.section("Watch propagation, p50 (register here → `Added` in another process)", "watch_p50",
                       "watch p50", [None],
                       "tooz has no push watch: `run_watchers()` is polled every 10 ms in the other process. "
                       "Consul: waypost and raw both follow blocking queries (`?index=`), which return the new "
                       "state as soon as the write commits.",
                       n_label="")
    out += rep.section("Watch propagation, p99", "watch_p99", "watch p99", [None], "", n_label="")
    out += rep.section("Crash detection (SIGKILL → `Removed` elsewhere, ttl = 2 s)", "crash_detect",
                       "crash detection", [None],
                       "raw exists only where the store expires keys itself (etcd leases, Consul sessions); on "
                       "Redis and file liveness is the backend's own scheme (reaping on reads), on memory there is "
                       "no other process. **Consul invalidates a session up to 2 x TTL after its last renewal** "
                       "(it doubles the TTL to tolerate clock skew; renewals come every ttl/3, so 3.3-4 s after a "
                       "crash at ttl = 2 s; here the kill follows the session's creation within milliseconds, "
                       "hence ~4 s), waypost and raw alike: Consul's bound, not waypost's. tooz 8.1 on Consul has no "
                       "figure: its member keys are not tied to its session (a killed member is never removed) "
                       "and python-consul2 refuses session TTLs below 10 s.", n_label="")
    out += rep.section("Keepalive cost (store operations per second, ttl = 2 s)", "keepalive_ops", "keepalive",
                       ns_ka,
                       "E = endpoints registered in the Runtime. etcd: gRPC requests received by the server; Redis: "
                       "commands executed by the server (inside Lua scripts too); Consul: HTTP requests served by "
                       "the agent (Prometheus `consul_http_*_count`); file: filesystem calls (audit "
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
    out += rep.section("`import` time (fresh interpreter, bytecode cached, wall clock of the import)", "import",
                       "import", [None],
                       "waypost: `import waypost` (backends load lazily) · raw: the client library "
                       "(`pyetcd`, `redis`, `consul` = py-consul) · tooz: `import tooz.coordination` (tooz 9, this "
                       "interpreter). Every module was imported once with bytecode writing on before timing (the "
                       "harness runs under `PYTHONDONTWRITEBYTECODE=1`, which left an editable install compiling "
                       "from source on every import while pip had compiled the others), and each import is "
                       "checked to load every module from a valid `.pyc` (see the notes). The modules alternate "
                       "round by round. `time.perf_counter()` around the `import` statement.", n_label="")
    out += rep.section("`import` time, `python -X importtime` (cumulative, same runs' conditions)", "import_x",
                       "import -X importtime", [None],
                       "The same imports under `-X importtime` (its per-module bookkeeping weighs more on "
                       "tooz.coordination's ~280 modules than on waypost's ~70).", n_label="")
    out += rep.section("List N = 100 000: peak RSS of the call (fresh process)", "list_rss", "list peak RSS",
                       sorted({k[2] for k in table if k[0] == "list_rss"}),
                       "`_worker.py listmem`: one list in a fresh process (connection warmed on an empty prefix); "
                       "VmHWM after the call minus VmRSS before it (`/proc/self/clear_refs` resets the peak), "
                       "so the client library's C buffers (gRPC reply, hiredis) count too.")
    out += rep.section("List N = 100 000: tracemalloc peak of the call", "list_pymem", "list tracemalloc peak",
                       sorted({k[2] for k in table if k[0] == "list_pymem"}),
                       "Python allocations only, peak during the call (the same process, a second call).")
    out += rep.section("List N = 100 000: what the returned list holds (tracemalloc)", "list_held", "list held",
                       sorted({k[2] for k in table if k[0] == "list_held"}), "")
    out += rep.section("Memory per instance held by a `Client` (N = 1 000, tracemalloc)", "client_mem",
                       "client memory", sorted({k[2] for k in table if k[0] == "client_mem"}),
                       "waypost: `Endpoint.client()` after it has seen all N · raw: dict of key → parsed JSON · "
                       "tooz: the `get_members_with_capabilities()` result.")
    out += ["## Flags (issue 6: ratio to raw > 1.2 for register/list, or slower than tooz by > 10 %)", ""]
    out += [f"- {f}" for f in rep.flags] or ["- none"]
    out += ["", "## Why (profiled with `benchmarks/profile_ops.py` (pyinstrument), timeit of the pieces, Redis "
            "`INFO commandstats`)", ""]
    out += [f"- {text}" for text in EXPLANATIONS]
    out += ["", "## Notes", ""]
    out += [f"- {n}" for n in notes] or ["- none"]
    out += ["", "See `benchmarks/README.md` for what each figure measures and how to run the harness.", ""]
    return "\n".join(out)


SOAK_BEGIN, SOAK_END = "<!-- soak:begin -->", "<!-- soak:end -->"


def kept_soak_section(path: Path) -> str:
    """The "Soak and faults" section ``benchmarks/soak/run.py --results`` wrote into ``path``, to keep it."""
    try:
        old = path.read_text()
    except OSError:
        return ""
    if SOAK_BEGIN not in old or SOAK_END not in old:
        return ""
    section = old[old.index(SOAK_BEGIN):old.index(SOAK_END) + len(SOAK_END)]
    return "\n" + section + "\n"


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
    text = render(table, env, notes, args.command)
    Path(args.output).write_text(text + kept_soak_section(Path(args.output)))
    print(f"report: wrote {args.output} ({len(table)} figures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

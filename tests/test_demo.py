"""`waypost demo`, run as the real command: exit 0 in time, the right events, nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow


def run_demo(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}  # the demo's temp directory lands here
    for name in ("WAYPOST_URL", "DYN_DISCOVERY_BACKEND", "DYN_FILE_KV"):
        env.pop(name, None)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "waypost", "demo", *args], capture_output=True, text=True,
                          env=env, timeout=60, check=False)
    return done, time.monotonic() - started


def assert_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_demo_json_story_timings_and_cleanup(tmp_path: Path) -> None:
    done, elapsed = run_demo(tmp_path, "--json", "--workers", "4")
    assert done.returncode == 0, done.stderr
    assert elapsed < 30
    events: list[dict[str, Any]] = [json.loads(line) for line in done.stdout.splitlines()]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start"
    assert kinds[-1] == "summary"
    assert kinds.count("spawn") == kinds.count("added") == kinds.count("removed") == 4
    assert [e["signal"] for e in events if e["type"] == "signal"] == ["SIGKILL"] + ["SIGTERM"] * 3

    ttl = events[0]["ttl"]
    summary = events[-1]
    # A crash is only noticed once the file is stale, and within ttl + one scan (+ scheduling slack).
    assert 0 < summary["crash_detection_s"] <= ttl + events[0]["poll_interval"] + 1.0
    assert summary["graceful_detection_s"] < 1.0
    removed = {e["worker"]: e["after_signal"] for e in events if e["type"] == "removed"}
    assert removed["worker-1"] == summary["crash_detection_s"]
    assert all(removed[f"worker-{n}"] < 1.0 for n in (2, 3, 4))

    # Nothing left: the temp directory is gone and every worker has exited.
    assert list((tmp_path / "tmp").iterdir()) == []
    assert summary["removed_dir"].startswith(str(tmp_path / "tmp"))
    for event in events:
        if event["type"] == "spawn":
            assert_gone(event["pid"])


def test_demo_readable_output(tmp_path: Path) -> None:
    done, elapsed = run_demo(tmp_path)
    assert done.returncode == 0, done.stderr
    assert elapsed < 30
    out = done.stdout
    for text in ("starting 3 workers", "the watch now sees 3 instances", "WORKER", "SIGKILL worker-1",
                 "- worker-1 disappeared", "SIGTERM worker-2", "- worker-2 disappeared", "serving now: nobody",
                 "done: crash seen after"):
        assert text in out
    assert list((tmp_path / "tmp").iterdir()) == []


def test_demo_on_a_given_store_leaves_it_empty(tmp_path: Path) -> None:
    store = tmp_path / "store"
    done, _ = run_demo(tmp_path, "--url", f"file://{store}", "--workers", "2", "--json")
    assert done.returncode == 0, done.stderr
    assert list((store / "v1" / "instances").iterdir()) == []
    assert list((store / ".waypost" / "leases").iterdir()) == []


def test_demo_refuses_an_in_process_backend(tmp_path: Path) -> None:
    done, _ = run_demo(tmp_path, "--url", "memory://")
    assert done.returncode == 1
    assert "does not work across processes" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_demo_still_leaves_nothing_behind(tmp_path: Path, sig: signal.Signals) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("WAYPOST_URL", "DYN_DISCOVERY_BACKEND", "DYN_FILE_KV")}
    proc = subprocess.Popen([sys.executable, "-m", "waypost", "demo", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**env, "TMPDIR": str(scratch)})
    pids = []
    assert proc.stdout is not None
    for line in proc.stdout:  # interrupt once every worker is registered, mid-story
        event = json.loads(line)
        pids += [event["pid"]] if event["type"] == "spawn" else []
        if event["type"] == "instances":
            break
    proc.send_signal(sig)
    proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert list(scratch.iterdir()) == []
    for pid in pids:
        assert_gone(pid)

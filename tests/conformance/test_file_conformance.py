"""The shipped conformance suite against the file backend, with inotify and with polling."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from waypost.contrib.conformance import BackendConformance, Harness

SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")


def _path(root: Path, key: bytes) -> Path:
    """Dynamo's layout for any key: the first two segments are the bucket, the rest %-encoded, as bytes."""
    parts = key.split(b"/", 2)
    bucket, rest = b"/".join(parts[:2]), parts[2] if len(parts) > 2 else b""
    name = "".join(chr(b) if b in SAFE else f"%{b:02X}" for b in rest)
    return root / os.fsdecode(bucket) / name


def _raw(root: Path) -> dict[str, object]:
    """Plant and read files as another process writing the store would (any key, any bytes)."""

    def put(key: bytes, value: bytes) -> None:
        path = _path(root, key)
        for directory in reversed([p for p in path.parents if p != root and root in p.parents]):
            directory.mkdir(mode=0o700, exist_ok=True)
        tmp = path.with_name(".tmp_planted")
        tmp.write_bytes(value)
        later = time.time() + 60  # nobody keeps a planted file fresh: it must not go stale during a test
        os.utime(tmp, (later, later))
        tmp.replace(path)

    def get(key: bytes) -> bytes | None:
        path = _path(root, key)
        return path.read_bytes() if path.is_file() else None

    return {"raw_put": put, "raw_get": get}


def _bad_urls(root: Path) -> dict[str, str]:
    return {f"file://otherhost{root}": "three slashes", f"file://{root}?watcher=fast": "watcher",
            f"file://{root}?stale_after=0": "stale_after", "file:///": "refusing / as the store"}


class TestFileConformance(BackendConformance):
    @pytest.fixture
    def harness(self, tmp_path: Path) -> Harness:
        return Harness(url=f"file://{tmp_path}", ttl=1.0, expiry_bound=1.0, bad_urls=_bad_urls(tmp_path),
                       **_raw(tmp_path))  # type: ignore[arg-type]


class TestFilePollingConformance(BackendConformance):
    """Without inotify (watcher=poll, also what non-Linux systems get)."""

    @pytest.fixture
    def harness(self, tmp_path: Path) -> Harness:
        return Harness(url=f"file://{tmp_path}?watcher=poll", ttl=1.0, expiry_bound=1.0,
                       bad_urls=_bad_urls(tmp_path), **_raw(tmp_path))  # type: ignore[arg-type]

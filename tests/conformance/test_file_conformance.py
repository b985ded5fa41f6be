"""The shipped conformance suite against the file backend, in both watcher modes."""

from __future__ import annotations

from pathlib import Path

import pytest

from waypost.contrib.conformance import BackendConformance, Harness


def _bad_urls(root: Path) -> dict[str, str]:
    return {f"file://otherhost{root}": "three slashes", f"file://{root}?watcher=fast": "watcher",
            f"file://{root}?stale_after=0": "stale_after", "file:///": "refusing / as the store"}


class TestFileConformance(BackendConformance):
    @pytest.fixture
    def harness(self, tmp_path: Path) -> Harness:
        return Harness(url=f"file://{tmp_path}", ttl=1.0, expiry_bound=1.0, bad_urls=_bad_urls(tmp_path))


class TestFilePollingConformance(BackendConformance):
    """Without inotify (the fallback when watchfiles is not installed)."""

    @pytest.fixture
    def harness(self, tmp_path: Path) -> Harness:
        return Harness(url=f"file://{tmp_path}?watcher=poll", ttl=1.0, expiry_bound=1.0, bad_urls=_bad_urls(tmp_path))

"""The shipped conformance suite against the file backend, in both watcher modes."""

from __future__ import annotations

from pathlib import Path

import pytest

from waypost.contrib.conformance import BackendConformance, Harness


class TestFileConformance(BackendConformance):
    @pytest.fixture
    def harness(self, tmp_path: Path) -> Harness:
        return Harness(url=f"file://{tmp_path}", ttl=1.0, expiry_bound=1.0)


class TestFilePollingConformance(BackendConformance):
    """Without inotify (the fallback when watchfiles is not installed)."""

    @pytest.fixture
    def harness(self, tmp_path: Path) -> Harness:
        return Harness(url=f"file://{tmp_path}?watcher=poll", ttl=1.0, expiry_bound=1.0)

"""The shipped conformance suite against the memory backend, as a third party would run it."""

from __future__ import annotations

import uuid

import pytest

from waypost.contrib.conformance import BackendConformance, Harness


class TestMemoryConformance(BackendConformance):
    @pytest.fixture
    def harness(self) -> Harness:
        return Harness(url=f"memory://conformance-{uuid.uuid4().hex[:8]}", ttl=1.0, expiry_bound=0.2)

"""pytest plugin (entry point ``pytest11``): registers the suite's marker.

The suite itself is :class:`waypost.contrib.conformance.BackendConformance`;
this plugin stays tiny because pytest loads it in every session where waypost
is installed.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "waypost_conformance: a test of the waypost backend conformance suite")

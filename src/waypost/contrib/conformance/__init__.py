"""The conformance suite: the contract every waypost backend passes.

A backend (ours or a third party's) runs it with a few lines in its tests::

    import pytest
    from waypost.contrib.conformance import BackendConformance, Harness

    class TestMyBackend(BackendConformance):
        @pytest.fixture
        def harness(self, my_server) -> Harness:
            return Harness(url=my_server.url, ttl=1.0, expiry_bound=1.0,
                           server=my_server, unreachable_url="my://127.0.0.1:1")

A test is skipped only when the backend's class does not declare the
:class:`~waypost.Capability` it needs (or, for server faults, when the backend
has no server: it declares neither ``cross-host`` nor a ``server`` in the
harness). Everything else must pass.
"""

import pytest

# Plain asserts in the suite give pytest's detailed messages to any project that runs it.
pytest.register_assert_rewrite("waypost.contrib.conformance._suite", "waypost.contrib.conformance._harness")

from ._harness import Harness, ServerControl, wait_until  # noqa: E402
from ._suite import BackendConformance  # noqa: E402

__all__ = ["BackendConformance", "Harness", "ServerControl", "wait_until"]

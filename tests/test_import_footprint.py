"""What `import waypost` loads (issue 12): a short, fixed list. It must not grow without a reason.

No entry-point machinery (importlib.metadata loads at connect() or `waypost backends`), no pluggy (only
when an observer is registered or a hook fires), no CLI, no asyncio, no backend, no client library.
"""

from __future__ import annotations

import json
import subprocess
import sys

# Every waypost module `import waypost` may load. Adding one here needs a reason in the commit.
WAYPOST_MODULES = {
    "waypost", "waypost.core", "waypost.core._client", "waypost.core._config", "waypost.core._errors",
    "waypost.core._events", "waypost.core._handles", "waypost.core._instance", "waypost.core._names",
    "waypost.core._plugins", "waypost.core._query", "waypost.core._records", "waypost.core._runtime",
    "waypost.core._spi",
    "waypost.core._watch", "waypost.core.faults",
}
THIRD_PARTY = {"msgspec", "typing_extensions"}  # the wire codec, and what msgspec itself imports
NEVER = {"importlib.metadata", "pluggy", "click", "asyncio", "urllib.parse", "email", "zipfile", "grpc", "redis",
         "consul", "requests", "waypost.aio", "waypost.contrib", "waypost.backends", "waypost.core._kit",
         "waypost.core.hookspecs"}

PROBE = """
import json, sys
before = set(sys.modules)
import waypost
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def _loaded() -> set[str]:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60)
    return set(json.loads(done.stdout))


def test_import_waypost_loads_only_the_listed_modules() -> None:
    loaded = _loaded()
    ours = {m for m in loaded if m.split(".")[0] == "waypost"}
    assert ours <= WAYPOST_MODULES, f"new waypost modules at import: {sorted(ours - WAYPOST_MODULES)}"
    stdlib = set(sys.stdlib_module_names)
    third = {m.split(".")[0] for m in loaded} - stdlib - {"waypost", "_distutils_hack"}
    assert third <= THIRD_PARTY, f"new third-party packages at import: {sorted(third - THIRD_PARTY)}"
    assert not {m for m in loaded if m in NEVER or any(m.startswith(n + ".") for n in NEVER)}, (
        sorted(m for m in loaded if m in NEVER or any(m.startswith(n + ".") for n in NEVER)))


def test_what_is_deferred_still_works_on_first_use() -> None:
    code = ("import waypost, sys\n"
            "assert waypost.hookimpl is not None and 'pluggy' in sys.modules\n"
            "assert waypost.core.WatchLoop.__name__ == 'WatchLoop'\n"
            "assert waypost.aio.connect is not None\n"
            "with waypost.connect('memory://lazy') as rt: rt.list_instances()\n"
            "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout.strip() == "ok", done.stderr

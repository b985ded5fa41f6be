"""Embedded file backend: ``file:///path`` — Dynamo's own file discovery store.

Several processes on one machine find each other through a directory; no
server runs. The layout is Dynamo's file store, so a waypost process and a
Dynamo process (``DYN_DISCOVERY_BACKEND=file``) sharing the directory see each
other's instances and reap each other's dead.

URL grammar
    ``file:///absolute/path`` (``file://localhost/absolute/path`` too; ``%20``
    and friends are decoded). ``file://`` with no path is the default
    directory: ``$DYN_FILE_KV`` if set, else ``$TMPDIR/dynamo_store_kv``
    (``tempfile.gettempdir()``). ``waypost.connect()`` with no URL and no
    environment uses that default. A missing directory is created, parents too.

Layout (design §3)
    ``<root>/v1/instances/`` holds one file per registered endpoint instance;
    its siblings ``v1/mdc/`` (model cards), ``v1/event_channels/`` and
    ``v1/event_sources/`` hold Dynamo's other record kinds the same way (all
    four are created ``0700`` at ``connect()``). A file's name is the key
    relative to its bucket, e.g. ``ns/comp/ep/<hex id>``, with
    every byte outside ``[A-Za-z0-9]`` written as ``%XX`` (uppercase hex), so
    ``dynamo/backend/generate/6f64a219dfbb2106`` is stored as
    ``dynamo%2Fbackend%2Fgenerate%2F6f64a219dfbb2106``. Its content is the
    instance's compact JSON value, byte for byte. A file is published
    atomically: written to ``.tmp_<lease hex>-<random hex>`` in the same directory, then
    ``link()``-ed to its name (create-only: the kernel lets exactly one of two
    racing processes win) or ``rename()``-d over it (re-registration). Names
    starting with ``.tmp_`` are never read; one older than ``stale_after``
    was left by a process killed mid-write and is deleted (as Dynamo does),
    and revoking a lease deletes its own at once.

    waypost also keeps one *lease file* per Runtime in ``<root>/.waypost/leases/
    <hex id>`` (Dynamo never looks there). It makes "this instance id is held
    by a live Runtime" exact even before the Runtime registers anything, and it
    lets another process revoke a lease.

Liveness
    By modification time. Each Runtime's keepalive thread touches its lease
    file and every instance file it owns every ttl/3; if one of them vanished
    (reaped or revoked by someone else) or is now another Runtime's file of the
    same name, the Runtime is told its lease was lost and re-registers
    everything under the same id. A Runtime only touches or deletes the very
    files it wrote (it keeps each one open and compares device and inode), so
    a file of the same name written after its own was reaped (another Runtime
    granted the same instance id) is left alone. Any process deletes files
    whose mtime is more than ``stale_after`` seconds old when it sees them: on
    every ``list`` and watch scan, and in one store-wide pass per
    ``min(1 s, stale_after / 4)`` that the processes with a watch elect among
    themselves (``.waypost/reaper``); with no watch alive, a keepalive runs
    that pass every ``4 x stale_after`` (lists never show stale files, and
    Dynamo processes reap on their own). A crashed
    (SIGKILLed) process therefore disappears within ttl + ``poll_interval``
    for any watcher, and from any ``list``, as long as *some* process reads
    the directory (there is no server to expire files on its own; this backend
    does not declare ``server-expiry``).

Options (URL query ``file:///dir?stale_after=10`` or ``connect()`` keywords)
    ``stale_after``
        seconds after its last touch when a file counts as dead and is
        deleted. Default: the Runtime's ``ttl`` (default 10 s, Dynamo's
        value). Every process sharing a directory must agree: a process with
        a small ttl would reap the files of a process with a larger one
        (Dynamo touches every ~3 s and uses 10 s), so when sharing with Dynamo
        keep ``ttl=10`` or set ``stale_after=10``.
    ``poll_interval``
        seconds between a watch's full directory scans (which also reap
        stale files). Default ``min(0.25, stale_after / 4)``.
    ``watcher``
        ``auto`` (default): Linux inotify (through libc; nothing to install)
        where available, else polling; ``inotify`` requires it; ``poll``
        never uses it. inotify only makes other processes' changes arrive in
        milliseconds instead of within ``poll_interval``; changes made by
        this process reach its watches at once either way.

Instance ids
    A random non-zero u64 per Runtime, or the ``instance_id`` you ask for
    (``chosen-instance-id``): refused with ``AlreadyRegistered`` while a fresh
    lease file, or fresh instance files of another process, carry that id.

Watches
    The snapshot, then events: changes made by Runtimes in this process are
    delivered in order with their values; changes made by other processes are
    found by scanning the directory (woken by inotify, and at least every
    ``poll_interval``) and delivered as the minimal diff since the last scan.
    An unreadable directory interrupts the watch; it resyncs when readable.

Trust and permissions
    Directories are created ``0700`` and files ``0600``: only the same user
    can read them. Run the Dynamo and waypost processes that share a store as
    one user. Whoever can write the store can announce instances and delete
    them, so the backend refuses (``ConfigError`` at ``connect()``, naming the
    path, what it found and the fix) a store directory (the root,
    ``v1/``, ``v1/instances/``, ``.waypost/``, ``.waypost/leases/``) that is
    a symbolic link, owned by another user, or writable by group or others
    (the four buckets are checked the same way).
    Every directory is opened once without following links and every file
    operation names a file relative to that descriptor, never following a
    link: nothing outside the store is ever read, written, touched or
    deleted, and only regular files inside it are. Files are read
    non-blocking and only when they are regular files of at most
    ``waypost.core.MAX_VALUE_BYTES`` (a FIFO or device put in the store is skipped with a
    warning, never waited on). The directories above the root are resolved
    as usual; see docs/security.md.

Errors
    A store path that is a file, a symbolic link, a directory this user
    cannot write or does not own, or one writable by others, is a
    ``ConfigError`` naming the path at ``connect()``; a filesystem failure
    later (disk full, I/O error) is ``BackendUnavailable``. A store directory
    removed while in use is recreated by the next write or keepalive.
    Undecodable file names, sub-directories and unreadable files in the bucket
    are skipped with one warning each; undecodable contents are skipped with
    the usual codec warning; nothing in the directory can crash a list or a
    watch.

Cost
    ``list`` is one directory listing plus one read per matching file;
    ``register`` writes one small file and hard-links it (well under a
    millisecond on a local disk); a keepalive touches one file per endpoint.
    Each Runtime holds one open file descriptor per registered endpoint, plus
    one for its lease file.

Limits
    POSIX only. One host, or a shared filesystem with coherent mtimes and
    clocks and working hard links (NFS attribute caching makes that
    unreliable, so the backend does not declare ``cross-host``). Crash
    detection needs some process reading the directory. Minimum ttl: 1 s.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import grp
import json
import logging
import os
import pwd
import re
import secrets
import select
import socket
import stat
import struct
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, unquote_to_bytes

from waypost.core import (
    BUCKETS,
    KEY_ROOT,
    MAX_VALUE_BYTES,
    AlreadyRegistered,
    Backend,
    BackendUnavailable,
    Capability,
    Closed,
    ConfigError,
    Lease,
    LeaseLost,
    Option,
    ParsedURL,
    WatchHandle,
    WatchLoop,
    WatchRegistry,
    WatchSink,
    WaypostError,
    parse_choice,
    parse_float,
    random_instance_id,
    skip_value,
)

__all__ = ["FileBackend", "decode_name", "default_root", "encode_name"]

_log = logging.getLogger("waypost")

TMP_PREFIX = ".tmp_"
LEASE_DIR = ".waypost/leases"
_STORE_DIRS = ("", "v1", *BUCKETS, ".waypost", LEASE_DIR)
KEEPALIVE_REAP_AFTER = 4  # stale_afters between store-wide passes a keepalive runs (when no watch reaps)
_LEASED = (KEY_ROOT, "v1/mdc")  # the buckets whose keys name the lease: ``{ns}/{comp}/{ep}/{lease hex}[/…]``
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_ENCODED_NAME = re.compile(r"(?:[A-Za-z0-9]|%[0-9A-F]{2})+")
_DIR_MODE = 0o700
_FILE_MODE = 0o600
_MAX_NAME = 255  # bytes in one file name on every common Linux filesystem
# Never follow a link, never block on a FIFO or device, never become its controlling terminal.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


# Names and paths ------------------------------------------------------------------

def _tmp_prefix(lease_id: int) -> str:
    """Names of a lease's files being written (a ``.tmp_`` file lives microseconds; a stale one was left by a
    crash, and Dynamo, too, deletes it once it is older than the ttl)."""
    return f"{TMP_PREFIX}{lease_id:x}-"


def encode_name(relative_key: str) -> str:
    """A key relative to its bucket as a file name: bytes outside ``[A-Za-z0-9]`` → ``%XX``."""
    return "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in relative_key.encode())


def decode_name(name: str) -> str | None:
    """The relative key a file name encodes, or ``None`` if it is not a canonical encoding."""
    if _ENCODED_NAME.fullmatch(name) is None:
        return None
    if name.count("%") == name.count("%2F"):
        return name.replace("%2F", "/")  # the common case (only the separators escaped): no byte round trip
    try:
        return unquote_to_bytes(name).decode("utf-8")
    except UnicodeDecodeError:
        return None


def default_root() -> Path:
    """``$DYN_FILE_KV``, else ``$TMPDIR/dynamo_store_kv`` (Dynamo's default)."""
    configured = os.environ.get("DYN_FILE_KV")
    return Path(configured) if configured else Path(tempfile.gettempdir()) / "dynamo_store_kv"


def _split(key: str) -> tuple[str, str]:
    """``key`` as its bucket and the key relative to it."""
    for bucket in BUCKETS:
        if key.startswith(bucket + "/") and len(key) > len(bucket) + 1:
            return bucket, key[len(bucket) + 1:]
    raise ConfigError(f"the file:// store keeps keys under {', '.join(b + '/' for b in BUCKETS)} only, "
                      f"got {key[:200]!r}")


def _covered(prefix: str) -> list[tuple[str, str]]:
    """The buckets a key prefix reaches, each with the prefix relative to it."""
    covered = []
    for bucket in BUCKETS:
        if prefix.startswith(bucket + "/"):
            covered.append((bucket, prefix[len(bucket) + 1:]))
        elif (bucket + "/").startswith(prefix):
            covered.append((bucket, ""))
    return covered


def _names_lease(relative: str, marker: str) -> bool:
    """Does the relative key of a ``_LEASED`` bucket name the lease ``marker`` (``ns/comp/ep/<id>[/lora]``)?"""
    return relative.split("/")[3:4] == [marker]


def _unavailable(action: str, path: str, exc: OSError) -> BackendUnavailable:
    error = BackendUnavailable(f"file:// store: cannot {action} {path}: {exc.strerror or exc}")
    error.__cause__ = exc
    return error


class _Skipped(Exception):
    """A directory entry that is not a file this backend reads (the message says why)."""


# The store's directories: opened without following links, checked, held open ------------

def _owner(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


@functools.lru_cache(maxsize=16)
def _private_group(gid: int) -> bool:
    """Is ``gid`` this user's own group, with nobody else in it (a user-private group)?

    Dynamo creates its directories with the umask's mode, and under the
    common umask 002 of user-private-group systems they are group-writable:
    harmless when the group is the user alone (OpenSSH's rule, too).
    """
    try:
        user = pwd.getpwuid(os.geteuid())
        group = grp.getgrgid(gid)
    except KeyError:
        return False
    return gid == user.pw_gid and group.gr_name == user.pw_name and set(group.gr_mem) <= {user.pw_name}


def _distrust(st: os.stat_result, path: str) -> str | None:
    """Why a store directory with this status cannot be trusted, or ``None``."""
    if st.st_uid != os.geteuid():
        return (f"is owned by {_owner(st.st_uid)}, not by this user ({_owner(os.geteuid())}): its owner could "
                "announce or delete instances; use a directory you own (file:///path or DYN_FILE_KV)")
    writers = [who for who, bit in (("group", 0o020), ("others", 0o002)) if st.st_mode & bit]
    if writers == ["group"] and _private_group(st.st_gid):
        writers = []
    if writers:
        return (f"is writable by {' and '.join(writers)} (mode {stat.S_IMODE(st.st_mode):04o}): other users could "
                f"announce or delete instances; run `chmod -R go-w {path}` and remove files you do not own "
                "there, or use a new directory")
    return None


def _check_trusted(fd: int, path: str) -> None:
    """Refuse a store directory another user could write to (closing ``fd`` first)."""
    problem = _distrust(os.fstat(fd), path)
    if problem is not None:
        os.close(fd)
        raise ConfigError(f"file:// store: refusing {path}: it {problem}")


def _open_dir(parent_fd: int, name: str, path: str) -> int:
    """Open (creating it ``0700`` if missing) the directory ``name`` without following a link."""
    for attempt in range(2):
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            if attempt:
                raise ConfigError(f"file:// store: {path} vanished while it was being opened") from None
            try:
                os.mkdir(name, _DIR_MODE, dir_fd=parent_fd)
            except FileExistsError:
                pass  # another process made it first
            except PermissionError:
                raise ConfigError(f"file:// store: cannot create {path}: permission denied; "
                                  "choose a writable directory (file:///path or DYN_FILE_KV)") from None
            except OSError as exc:
                raise _unavailable("create", path, exc) from exc
            continue
        except OSError as exc:
            raise _wrong_dir(parent_fd, name, path, exc) from None
        _check_trusted(fd, path)
        return fd
    raise AssertionError("unreachable")  # pragma: no cover


def _wrong_dir(parent_fd: int, name: str, path: str, exc: OSError) -> WaypostError:
    try:
        st: os.stat_result | None = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except OSError:
        st = None
    if st is not None and stat.S_ISLNK(st.st_mode):
        target = os.readlink(name, dir_fd=parent_fd)
        return ConfigError(f"file:// store: refusing {path}: it is a symbolic link (to {target}, owned by "
                           f"{_owner(st.st_uid)}), and the store never follows links (another user could point it "
                           "anywhere); remove it, or name the directory itself")
    if (st is not None and not stat.S_ISDIR(st.st_mode)) or exc.errno == errno.ENOTDIR:
        return ConfigError(f"file:// store: {path} is not a directory; remove it or choose another path")
    if isinstance(exc, PermissionError):
        found = "" if st is None else (f" (owned by {_owner(st.st_uid)}, mode {stat.S_IMODE(st.st_mode):04o})")
        return ConfigError(f"file:// store: cannot open {path}: permission denied{found}; "
                           "use a directory you own (file:///path or DYN_FILE_KV)")
    return _unavailable("open", path, exc)


def _absolute(root: str) -> str:
    """``root`` made absolute without resolving ``..`` lexically (the kernel resolves it, as Dynamo's does)."""
    path = root if os.path.isabs(root) else os.path.join(os.getcwd(), root)
    return path.rstrip("/") or "/"


def _open_root(root: str) -> int:
    """The root directory: its parents resolved as usual (created ``0700``), the root itself never a link."""
    parent, name = os.path.split(root)
    if root == "/" or not name:
        raise ConfigError("file:// store: refusing / as the store: name a directory of its own, e.g. "
                          "file:///tmp/discovery")
    missing = []
    ancestor = parent
    while ancestor and not os.path.lexists(ancestor):
        missing.append(ancestor)
        ancestor = os.path.dirname(ancestor)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, _DIR_MODE)
        except FileExistsError:
            pass
        except (NotADirectoryError, PermissionError) as exc:
            reason = "permission denied" if isinstance(exc, PermissionError) else "a parent is not a directory"
            raise ConfigError(f"file:// store: cannot create {directory}: {reason}; "
                              "choose a writable directory (file:///path or DYN_FILE_KV)") from None
        except OSError as exc:
            raise _unavailable("create", directory, exc) from exc
    try:
        parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except NotADirectoryError:
        raise ConfigError(f"file:// store: {root} or one of its parents is a file, not a directory") from None
    except PermissionError:
        raise ConfigError(f"file:// store: cannot open {parent}: permission denied") from None
    except OSError as exc:
        raise ConfigError(f"file:// store: cannot open {parent}: {exc.strerror or exc} (a dangling link?)") from None
    try:
        _warn_if_replaceable(parent)
        return _open_dir(parent_fd, name, root)
    finally:
        os.close(parent_fd)


@functools.lru_cache(maxsize=64)
def _warn_if_replaceable(parent: str) -> None:
    """Warn (once) when another user could rename the store away: a parent writable by others, not sticky."""
    directory = os.path.realpath(parent)
    while True:
        with contextlib.suppress(OSError):
            st = os.stat(directory)
            if st.st_mode & 0o002 and not st.st_mode & stat.S_ISVTX:
                _log.warning("file:// store: %s is writable by others without the sticky bit: another user could "
                             "replace the store below it", directory)
                return
        if directory == "/":
            return
        directory = os.path.dirname(directory)


class _Dir:
    """One directory of the store, held open: every file operation in it names a file relative to it.

    Nothing here follows a symbolic link, and only regular files this user
    owns are read, and only regular files are touched or deleted, so whatever
    another process swaps in, nothing outside the store is affected.
    """

    __slots__ = ("fd", "path")

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path

    def names(self) -> list[str]:
        # A descriptor of its own: its read position is not shared with scans in other threads.
        fd = os.open(".", _DIR_FLAGS, dir_fd=self.fd)
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    def lstat(self, name: str) -> os.stat_result | None:
        """The entry ``name`` itself (a link is not followed); ``None`` if it is gone."""
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def read(self, name: str) -> bytes | None:
        """The content of the regular file ``name``; ``None`` if it is gone; :class:`_Skipped` if not one."""
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=self.fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _Skipped("it is a symbolic link (never followed)") from None
            raise _Skipped(exc.strerror or str(exc)) from None
        try:
            st = os.fstat(fd)  # the file actually opened, not what a listing saw a moment ago
            if not stat.S_ISREG(st.st_mode):
                raise _Skipped("not a regular file")
            if st.st_uid != os.geteuid():
                raise _Skipped(f"owned by {_owner(st.st_uid)}, not by this user")
            if st.st_size > MAX_VALUE_BYTES:
                raise _Skipped(f"{st.st_size} bytes, more than the {MAX_VALUE_BYTES} a value may have")
            want = max(st.st_size, 4096) + 1
            chunk = os.read(fd, want)
            if len(chunk) < want:
                # Short of what was asked: the end (files are published whole, by link or rename, and
                # never written in place), so no second read to meet it.
                return chunk
            chunks, size = [], 0
            while chunk:  # it grew since fstat: someone writes it in place
                size += len(chunk)
                if size > MAX_VALUE_BYTES:
                    raise _Skipped(f"more than the {MAX_VALUE_BYTES} bytes a value may have")
                chunks.append(chunk)
                chunk = os.read(fd, want)
            return b"".join(chunks)
        except OSError as exc:
            raise _Skipped(exc.strerror or str(exc)) from None
        finally:
            os.close(fd)

    def create(self, name: str) -> int | None:
        """Create the file ``name`` (0600) for writing; ``None`` if something of that name exists."""
        try:
            return os.open(name, _CREATE_FLAGS, _FILE_MODE, dir_fd=self.fd)
        except FileExistsError:
            return None
        except OSError as exc:
            raise _unavailable("create", f"{self.path}/{name}", exc) from exc

    def unlink(self, name: str, expected: os.stat_result | None = None) -> bool:
        """Delete the regular file ``name`` (only if it still is ``expected``); ``True`` if it was deleted."""
        st = self.lstat(name)
        if st is None or not stat.S_ISREG(st.st_mode):
            return False
        if expected is not None and (st.st_dev, st.st_ino) != (expected.st_dev, expected.st_ino):
            return False
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _unavailable("delete", f"{self.path}/{name}", exc) from exc
        return True

    def holds(self, name: str, fd: int | None) -> os.stat_result | None:
        """The entry ``name`` if it is the very file open as ``fd`` (one we wrote), else ``None``.

        We keep each file we wrote open, so its inode cannot be freed and reused
        by a file of the same name written after ours was deleted.
        """
        if fd is None:
            return None
        try:
            st = self.lstat(name)
        except OSError as exc:
            raise _unavailable("examine", f"{self.path}/{name}", exc) from exc
        if st is None:
            return None
        mine = os.fstat(fd)
        return st if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino) else None

    def touch_if_held(self, name: str, fd: int | None) -> bool:
        """Refresh the mtime of our file ``name`` (through its descriptor); ``False`` if it is not ours any more."""
        if fd is None or self.holds(name, fd) is None:
            return False
        try:
            os.utime(fd)  # futimens: the file itself, whatever its name points to by now
        except OSError as exc:
            raise _unavailable("touch", f"{self.path}/{name}", exc) from exc
        return True

    def publish(self, tmp: str, name: str, *, replace: bool) -> None:
        """Give the written ``tmp`` its name: ``link()`` (create-only) or ``rename()`` (replace)."""
        if replace:
            os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        else:
            os.link(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd, follow_symlinks=False)

    def identity(self) -> tuple[int, int]:
        st = os.fstat(self.fd)
        return st.st_dev, st.st_ino

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            _close(fd)


class _Tree:
    """The store's directories by path relative to the root, checked on every use.

    ``using(...)`` hands out open directories after checking that each is
    still the directory of that name, not removed, renamed or replaced, and
    still trusted; a directory that is not is opened again by name (and
    checked again: a link or foreign directory put in its place is refused).
    A replaced descriptor is closed only once no operation uses it any more,
    so a descriptor number is never reused under a running operation.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._dirs: dict[str, _Dir] = {}
        self._retired: list[_Dir] = []  # replaced directories, closed once nobody uses them
        self._users = 0
        self._closed = False
        with self.using("") as (root_dir,):
            self.identity = root_dir.identity()

    @contextlib.contextmanager
    def using(self, *relatives: str) -> Iterator[tuple[_Dir, ...]]:
        """The directories ``relatives`` (``""`` is the root), valid for the duration of the block."""
        with self._lock:
            if self._closed:
                raise Closed(f"file://{self.root} backend is closed")
            dirs = tuple(self._valid(relative) for relative in relatives)
            self._users += 1
        try:
            yield dirs
        finally:
            with self._lock:
                self._users -= 1
                self._close_retired()

    def check(self, relatives: Iterable[str]) -> None:
        """Open every directory in ``relatives``; one :class:`ConfigError` naming every problem found."""
        problems = []
        for relative in relatives:
            try:
                with self.using(relative):
                    pass
            except ConfigError as exc:
                problems.append(str(exc).removeprefix("file:// store: "))
        if problems:
            raise ConfigError("file:// store: " + "; ".join(dict.fromkeys(problems)))

    def _valid(self, relative: str) -> _Dir:
        parent: _Dir | None = None
        walked = ""
        for part in ("", *filter(None, relative.split("/"))):
            walked = f"{walked}/{part}".strip("/")
            cached = self._dirs.get(walked)
            if cached is not None and not self._still_valid(cached, parent, part):
                self._retire(walked)
                cached = None
            if cached is None:
                path = f"{self.root}/{walked}" if walked else self.root
                fd = _open_root(self.root) if parent is None else _open_dir(parent.fd, part, path)
                cached = self._dirs[walked] = _Dir(fd, path)
            parent = cached
        assert parent is not None
        return parent

    def _still_valid(self, directory: _Dir, parent: _Dir | None, name: str) -> bool:
        try:
            st = os.fstat(directory.fd)
            named = os.lstat(self.root) if parent is None else os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
        except OSError:
            return False
        same = (named.st_dev, named.st_ino) == (st.st_dev, st.st_ino)
        return st.st_nlink > 0 and same and _distrust(st, directory.path) is None

    def _retire(self, relative: str) -> None:
        self._retired.append(self._dirs.pop(relative))
        self._close_retired()

    def _close_retired(self) -> None:
        if not self._users:
            for directory in self._retired:
                directory.close()
            self._retired.clear()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for relative in list(self._dirs):
                self._retire(relative)


def _skip(key: str, reason: str) -> None:
    """A file in the bucket that is not read as a value: one warning per key and reason, and the hook."""
    skip_value(key, reason.encode(), f"file:// store: {reason}")


def _close(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# In-process fan-out ----------------------------------------------------------------

class _Shared:
    """What this process's backends on one store directory share.

    File operations and their notifications happen under ``lock``, so watches
    in this process receive this process's changes in the order they hit disk.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.watches: list[_FileWatch] = []

    def publish(self, kind: str, key: str, value: bytes = b"") -> None:
        for watch in self.watches:
            watch.notify(kind, key, value)


_shared: dict[tuple[int, int], _Shared] = {}
_shared_lock = threading.Lock()


def _shared_for(identity: tuple[int, int]) -> _Shared:
    with _shared_lock:
        return _shared.setdefault(identity, _Shared())


@dataclass(frozen=True, slots=True)
class _Known:
    """A file as a watch last saw it; ``signature`` is ``None`` when learnt from a notification."""

    signature: tuple[int, int, int] | None  # inode, size, mtime_ns
    value: bytes


_Entry = tuple[str, str, os.stat_result]  # key, file name in the bucket, stat
# A file this backend wrote: its name in the bucket and a descriptor we keep open on it. The open
# file tells it apart from a file of the same name written later by another Runtime (ours was
# reaped or revoked, and the same instance id was granted again elsewhere): that one is never
# touched or deleted as ours.
_Mine = tuple[str, str, int]  # bucket, file name, descriptor
_Entries = list[_Entry]  # `list` is shadowed inside FileBackend by its method


# The backend ------------------------------------------------------------------------

class FileBackend(Backend):
    __doc__ = __doc__
    schemes: ClassVar[tuple[str, ...]] = ("file",)
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.CROSS_PROCESS, Capability.CHOSEN_INSTANCE_ID}
    )
    options: ClassVar[tuple[Option, ...]] = (
        Option("stale_after", parse_float(0.5, 86400.0), None,
               "seconds after its last touch when a file is dead and deleted (default: the ttl)"),
        Option("poll_interval", parse_float(0.01, 60.0), None,
               "seconds between a watch's directory scans (default: min(0.25, stale_after/4))"),
        Option("watcher", parse_choice("auto", "inotify", "poll"), "auto",
               "how watches notice other processes' changes: inotify (auto, inotify) or polling"),
    )
    min_ttl: ClassVar[float] = 1.0

    def __init__(self, root: Path, *, stale_after: float | None = None, poll_interval: float | None = None,
                 watcher: str = "auto") -> None:
        self.root = root
        self.bucket = root.joinpath(*KEY_ROOT.split("/"))  # the instances bucket
        self.use_inotify = _pick_watcher(watcher)
        self._tree = _Tree(_absolute(str(root)))
        try:
            self._tree.check(_STORE_DIRS)
            with self._tree.using(*BUCKETS, LEASE_DIR) as dirs:
                for directory in dirs:
                    if not os.access(".", os.W_OK | os.X_OK, dir_fd=directory.fd):
                        raise ConfigError(f"file:// store: {directory.path} is not writable by this user (uid "
                                          f"{os.geteuid()}); choose a writable directory (file:///path or DYN_FILE_KV)")
        except BaseException:
            self._tree.close()
            raise
        self._stale_after = stale_after
        self._poll_interval = poll_interval
        self._ttl = 10.0
        self._shared = _shared_for(self._tree.identity)
        self._owned: dict[int, dict[str, _Mine]] = {}  # lease id -> key -> file; guarded by _shared.lock
        self._markers: dict[int, int] = {}  # lease id -> open fd of the lease file we wrote; same lock
        self._warned: set[str] = set()
        self._watches: WatchRegistry[_FileWatch] = WatchRegistry(self.describe)
        self._next_reap_check = 0.0

    @classmethod
    def from_url(cls, url: ParsedURL, options: Mapping[str, Any]) -> FileBackend:
        for host, port in url.hosts:
            if host not in ("", "localhost") or port is not None:
                raise ConfigError(f"file:// URLs name a local directory, not host {host!r}: "
                                  "write file:///absolute/path (three slashes)")
        path = unquote(url.path)
        if "\x00" in path:
            raise ConfigError("file:// URL: the path holds a NUL byte (%00), which no file name can")
        return cls(Path(path) if path else default_root(), stale_after=options.get("stale_after"),
                   poll_interval=options.get("poll_interval"), watcher=options.get("watcher") or "auto")

    def describe(self) -> str:
        return f"file://{self.root}"

    @property
    def stale_after(self) -> float:
        return self._stale_after if self._stale_after is not None else self._ttl

    @property
    def poll_interval(self) -> float:
        return self._poll_interval if self._poll_interval is not None else min(0.25, self.stale_after / 4)

    @property
    def reap_interval(self) -> float:
        """How often (at most) some process sharing the store deletes its stale files."""
        return min(1.0, self.stale_after / 4)

    def _check(self) -> None:
        self._watches.check_open()

    def _name(self, key: str) -> tuple[str, str]:
        """The bucket of ``key`` and its file name there."""
        bucket, relative = _split(key)
        name = encode_name(relative)
        if len(name) > _MAX_NAME:
            raise ConfigError(f"key {key!r} is too long for the file:// store: its file name would have "
                              f"{len(name)} bytes (at most {_MAX_NAME})")
        return bucket, name

    def _warn_once(self, name: str, message: str) -> None:
        if name not in self._warned:
            self._warned.add(name)
            _log.warning("%s", message)

    # leases ---------------------------------------------------------------------------
    def grant_lease(self, ttl: float, preferred_id: int | None = None) -> Lease:
        self._check()
        if self._stale_after is not None and self._stale_after < ttl:
            raise ConfigError(f"stale_after={self._stale_after:g} is shorter than the ttl ({ttl:g} s): "
                              "live Runtimes' files would be deleted; use stale_after >= ttl")
        self._ttl = ttl
        if preferred_id is not None:
            if not self._claim(preferred_id, check_files=True):
                raise AlreadyRegistered(f"instance id {preferred_id:x} is held by a live Runtime "
                                        f"(fresh lease file or instance files in {self.root})")
            return Lease(preferred_id, ttl)
        lease_id = random_instance_id()
        while not self._claim(lease_id, check_files=False):
            lease_id = random_instance_id()
        return Lease(lease_id, ttl)

    def _claim(self, lease_id: int, check_files: bool) -> bool:
        """Create (or, for our own lost lease, refresh) the lease file of ``lease_id``."""
        name = f"{lease_id:x}"
        with self._shared.lock, self._tree.using(LEASE_DIR) as (leases,):
            old = self._markers.get(lease_id)
            if lease_id in self._owned and leases.touch_if_held(name, old):
                return True  # our own lease, lost and re-granted: its lease file is still ours
            if check_files and self._fresh_files_of(lease_id, self._owned.get(lease_id, {})):
                return False
            fd = self._create_marker(leases, name)
            if fd is None and self._reap(leases, name, None):
                fd = self._create_marker(leases, name)
            if fd is None:
                return False
            _close(old)
            self._markers[lease_id] = fd
            self._owned.setdefault(lease_id, {})
            return True

    @staticmethod
    def _create_marker(leases: _Dir, name: str) -> int | None:
        """Create a lease file exclusively; its open descriptor, or ``None`` if it exists."""
        fd = leases.create(name)
        if fd is None:
            return None
        try:
            _write_all(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        except OSError as exc:
            _close(fd)
            leases.unlink(name)
            raise _unavailable("write", f"{leases.path}/{name}", exc) from exc
        return fd

    def _fresh_files_of(self, lease_id: int, mine: Mapping[str, _Mine]) -> bool:
        """Are there live files named by ``lease_id`` (instances, model cards) that this backend did not write?"""
        marker = f"{lease_id:x}"
        with self._tree.using(*_LEASED) as dirs:
            return any(_names_lease(relative, marker) and not (key in mine and directory.holds(name, mine[key][2]))
                       for bucket, directory in zip(_LEASED, dirs, strict=True)
                       for key, name, _ in self._scan(directory, bucket, "")
                       for relative in (key[len(bucket) + 1:],))

    def keep_alive(self, lease: Lease) -> None:
        self._check()
        with self._shared.lock:
            owned = self._owned.get(lease.id)
            if owned is None:
                raise LeaseLost(f"file:// lease {lease.id:x} was revoked")
            with self._tree.using(LEASE_DIR) as (leases,):
                marker = f"{lease.id:x}"
                missing = [] if leases.touch_if_held(marker, self._markers.get(lease.id)) else [
                    f"{leases.path}/{marker}"]
            # Bucket by bucket: one that cannot be used (replaced, made untrusted) must not stop the
            # files in the others from being kept fresh.
            unusable: WaypostError | None = None
            for bucket_name in sorted({bucket for bucket, _, _ in owned.values()}):
                try:
                    with self._tree.using(bucket_name) as (bucket,):
                        for key, (in_bucket, name, fd) in list(owned.items()):
                            if in_bucket == bucket_name and not bucket.touch_if_held(name, fd):
                                # Not ours any more: forget it, so that a keepalive during the
                                # re-registration that follows checks only the files written again.
                                missing.append(f"{bucket.path}/{name}")
                                del owned[key]
                                _close(fd)
                except (ConfigError, BackendUnavailable) as exc:
                    unusable = unusable or exc
        if missing:
            raise LeaseLost(f"{missing[0]} was removed or replaced: it went stale and was reaped, "
                            "or another process revoked the lease (and may hold its id now)")
        if unusable is not None:
            raise BackendUnavailable(f"file:// store: cannot keep this Runtime's files alive: {unusable}")
        # Watches reap every reap_interval; a keepalive only when nobody did for KEEPALIVE_REAP_AFTER
        # stale_afters (no watcher alive). That pass is garbage collection: lists and watches never show
        # a stale file and Dynamo processes reap themselves. Rare, so that a Runtime's cost stays close to
        # O(its files) however big the store is.
        self._maybe_reap(max(self.reap_interval, KEEPALIVE_REAP_AFTER * self.stale_after))

    def revoke_lease(self, lease_id: int) -> None:
        self._check()
        with self._shared.lock:
            mine = self._owned.pop(lease_id, None)
            marker_fd = self._markers.pop(lease_id, None)
            try:
                with self._tree.using(LEASE_DIR) as (leases,):
                    self._revoke(lease_id, mine, marker_fd, leases)
            finally:
                _close(marker_fd)
                for _, _, fd in (mine or {}).values():
                    _close(fd)

    def _revoke(self, lease_id: int, mine: Mapping[str, _Mine] | None, marker_fd: int | None,
                leases: _Dir) -> None:
        marker = f"{lease_id:x}"
        if mine is not None:
            # Our own lease: we know its files. If we lost it, another Runtime may hold the id now:
            # only the very files we wrote go (holds() compares them), and its lease file stays.
            ours = leases.holds(marker, marker_fd) is not None
            for bucket_name, directory in self._each_bucket({bucket for bucket, _, _ in mine.values()}):
                for key, (in_bucket, name, fd) in sorted(mine.items()):
                    held = directory.holds(name, fd) if in_bucket == bucket_name else None
                    if held is not None and directory.unlink(name, held):
                        self._shared.publish("delete", key)
            if ours:
                leases.unlink(marker)
            return
        # Another Runtime's: the files its id names, and what a write of its left half done (the
        # process was killed mid-write).
        for bucket_name, directory in self._each_bucket(BUCKETS):
            for name in directory.names():
                if name.startswith(_tmp_prefix(lease_id)):
                    directory.unlink(name)
            if bucket_name in _LEASED:
                for key, name, _ in self._scan(directory, bucket_name, ""):
                    if _names_lease(key[len(bucket_name) + 1:], marker) and directory.unlink(name):
                        self._shared.publish("delete", key)
        leases.unlink(marker)

    def _each_bucket(self, names: Iterable[str]) -> Iterator[tuple[str, _Dir]]:
        """Each bucket in turn; one that cannot be used is skipped with a warning, not fatal to the rest."""
        for bucket_name in sorted(names):
            try:
                with self._tree.using(bucket_name) as (bucket,):
                    yield bucket_name, bucket
            except (ConfigError, BackendUnavailable) as exc:
                self._warn_once(bucket_name, f"file:// store: skipping {bucket_name}/: {exc}")

    def _require_lease(self, lease: Lease) -> dict[str, _Mine]:
        owned = self._owned.get(lease.id)
        if owned is None:
            raise LeaseLost(f"file:// lease {lease.id:x} was revoked")
        with self._tree.using(LEASE_DIR) as (leases,):
            if leases.holds(f"{lease.id:x}", self._markers.get(lease.id)) is None:
                raise LeaseLost(f"file:// lease {lease.id:x} is gone: {leases.path}/{lease.id:x} was removed "
                                "or replaced")
        return owned

    # writing ----------------------------------------------------------------------------
    def create(self, lease: Lease, key: str, value: bytes) -> None:
        self._check()
        self._write(lease, key, value, replace=False)

    def replace(self, lease: Lease, key: str, value: bytes) -> None:
        self._check()
        self._write(lease, key, value, replace=True)

    def _write(self, lease: Lease, key: str, value: bytes, *, replace: bool) -> None:
        bucket_name, name = self._name(key)
        with self._shared.lock, self._tree.using(bucket_name) as (bucket,):
            owned = self._require_lease(lease)
            tmp, fd = self._write_tmp(bucket, lease, value)
            try:
                self._publish(bucket, tmp, name, key, replace=replace)
            except BaseException:
                _close(fd)
                raise
            finally:
                bucket.unlink(tmp)  # after link() both names remain; after rename() it is gone already
            previous = owned.get(key)
            if previous is not None:
                _close(previous[2])
            owned[key] = (bucket_name, name, fd)
            self._shared.publish("put", key, value)

    def _publish(self, bucket: _Dir, tmp: str, name: str, key: str, *, replace: bool) -> None:
        """Give ``tmp`` its name; create-only unless ``replace`` (a stale leftover counts as absent)."""
        if replace:
            current = bucket.lstat(name)
            if current is not None and not stat.S_ISREG(current.st_mode):
                raise AlreadyRegistered(f"{key}: {bucket.path}/{name} is not a regular file; it is left alone")
        for attempt in range(2):
            try:
                bucket.publish(tmp, name, replace=replace)
                return
            except FileExistsError:
                if attempt or not self._reap(bucket, name, key):
                    raise AlreadyRegistered(f"{key} is already registered (live file {bucket.path}/{name})") from None
            except OSError as exc:
                raise _unavailable("publish", f"{bucket.path}/{name}", exc) from exc

    @staticmethod
    def _write_tmp(bucket: _Dir, lease: Lease, value: bytes) -> tuple[str, int]:
        """Write ``value`` to a new ``.tmp_`` file; return its name and a descriptor kept open on it."""
        while True:
            tmp = f"{_tmp_prefix(lease.id)}{secrets.token_hex(8)}"  # named by its lease: a revoke removes it
            fd = bucket.create(tmp)
            if fd is not None:  # else 64 random bits collided: a name in use is not ours to touch
                break
        try:
            _write_all(fd, value)
        except OSError as exc:
            _close(fd)
            bucket.unlink(tmp)
            raise _unavailable("write", f"{bucket.path}/{tmp}", exc) from exc
        return tmp, fd

    def delete(self, lease: Lease, key: str) -> None:
        self._check()
        bucket_name, name = self._name(key)
        with self._shared.lock, self._tree.using(bucket_name) as (bucket,):
            owned = self._owned.get(lease.id, {})
            mine = owned.get(key)
            # Only the file this lease wrote: after our lease was lost, a file of the same name may
            # belong to another Runtime that was granted the same instance id.
            held = bucket.holds(name, mine[2]) if mine is not None else None
            removed = held is not None and bucket.unlink(name, held)
            owned.pop(key, None)  # after the unlink: if that failed, the key stays ours to retry
            if mine is not None:
                _close(mine[2])
            if removed:
                self._shared.publish("delete", key)

    # reading ------------------------------------------------------------------------------
    def list(self, prefix: str) -> list[tuple[str, bytes]]:
        self._check()
        return sorted((key, known.value) for key, known in self._refresh(prefix, {}).items())

    def _refresh(self, prefix: str, known: Mapping[str, _Known]) -> dict[str, _Known]:
        """The files under ``prefix`` now, in every bucket it reaches; re-reads only those changed since ``known``."""
        fresh: dict[str, _Known] = {}
        for bucket_name, relative in _covered(prefix):
            with self._tree.using(bucket_name) as (bucket,):
                fresh.update(self._refresh_bucket(bucket, bucket_name, relative, known))
        return fresh

    def _refresh_bucket(self, bucket: _Dir, bucket_name: str, relative: str,
                        known: Mapping[str, _Known]) -> dict[str, _Known]:
        fresh: dict[str, _Known] = {}
        for key, name, st in self._scan(bucket, bucket_name, relative):
            signature = (st.st_ino, st.st_size, st.st_mtime_ns)
            old = known.get(key)
            if old is not None and old.signature == signature:
                fresh[key] = old
                continue
            value = self._read(bucket, name, key)
            if value is not None:
                fresh[key] = _Known(signature, value)
        return fresh

    def _read(self, bucket: _Dir, name: str, key: str) -> bytes | None:
        try:
            return bucket.read(name)
        except _Skipped as why:
            _skip(key, f"{bucket.path}/{name}: {why}")
            return None

    def _scan(self, bucket: _Dir, bucket_name: str, relative: str) -> _Entries:
        """One listing of a bucket: its live files under the relative key prefix; stale ones are reaped."""
        try:
            names = bucket.names()
        except FileNotFoundError:
            return []  # the store was removed: it is empty
        except OSError as exc:
            raise _unavailable("list", bucket.path, exc) from exc
        now = time.time()
        found = [self._examine(bucket, bucket_name, name, relative, now) for name in names]
        return [item for item in found if item is not None]

    def _examine(self, bucket: _Dir, bucket_name: str, name: str, relative: str, now: float) -> _Entry | None:
        if name.startswith(TMP_PREFIX):
            self._reap_tmp(bucket, name, now)
            return None
        key_in_bucket = decode_name(name)
        if key_in_bucket is None:
            self._warn_once(name, f"file:// store: ignoring {bucket.path}/{name}: its name is not a %-encoded key")
            return None
        if not key_in_bucket.startswith(relative):
            return None
        key = f"{bucket_name}/{key_in_bucket}"
        try:
            st = bucket.lstat(name)
        except OSError as exc:
            _skip(key, f"{bucket.path}/{name}: {exc.strerror or exc}")
            return None
        if st is None:
            return None
        if not stat.S_ISREG(st.st_mode):
            what = "a symbolic link (never followed)" if stat.S_ISLNK(st.st_mode) else "not a regular file"
            _skip(key, f"{bucket.path}/{name}: {what}")
            return None
        if st.st_mtime + self.stale_after < now:
            self._reap(bucket, name, key, st)
            return None
        if st.st_uid != os.geteuid():
            _skip(key, f"{bucket.path}/{name}: owned by {_owner(st.st_uid)}, not by this user")
            return None
        return key, name, st

    # reaping ------------------------------------------------------------------------------
    def _reap(self, directory: _Dir, name: str, key: str | None, seen: os.stat_result | None = None) -> bool:
        """Delete the regular file ``name`` if it is (still) stale; ``True`` if it is gone now."""
        with self._shared.lock:
            try:
                st = directory.lstat(name)
            except OSError:
                return False
            if st is None:
                return True
            replaced = seen is not None and st.st_ino != seen.st_ino
            age = time.time() - st.st_mtime
            if replaced or age <= self.stale_after or not stat.S_ISREG(st.st_mode):
                return False
            try:
                removed = directory.unlink(name, st)
            except BackendUnavailable as exc:
                self._warn_once(name, f"file:// store: cannot delete stale {directory.path}/{name}: {exc}")
                return False
            if not removed:
                return False
            _log.info("file:// store: deleted %s, last touched %.1f s ago (stale after %.1f s)",
                      key or f"{directory.path}/{name}", age, self.stale_after)
            if key is not None:
                self._shared.publish("delete", key)
            return True

    def _reap_tmp(self, bucket: _Dir, name: str, now: float) -> None:
        with contextlib.suppress(OSError, WaypostError):
            st = bucket.lstat(name)
            if st is not None and stat.S_ISREG(st.st_mode) and st.st_mtime + self.stale_after < now:
                bucket.unlink(name, st)

    def _reap_markers(self) -> None:
        with contextlib.suppress(OSError, WaypostError), self._tree.using(LEASE_DIR) as (leases,):
            for name in leases.names():
                if re.fullmatch(r"[0-9a-f]{1,16}", name):  # anything else is not ours to delete
                    self._reap(leases, name, None)

    def _maybe_reap(self, interval: float) -> None:
        """Delete every stale file if nobody sharing the store did so for ``interval`` seconds.

        The processes agree through ``.waypost/reaper``: its mtime is when the
        last pass began and an exclusive ``flock`` elects one process to run
        the next, so N processes reap once per interval between them, not N
        times. (Readers that do not reap, such as an older Dynamo, see the
        dead go too: within ``interval`` of going stale, which is 4 x
        ``stale_after`` when only keepalives reap.)
        """
        now = time.monotonic()
        if now < self._next_reap_check:
            return
        self._next_reap_check = now + min(interval, self.reap_interval) / 2
        try:
            with self._tree.using(".waypost") as (meta,):
                fd = os.open("reaper", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                             _FILE_MODE, dir_fd=meta.fd)
                try:
                    if self._elected(fd, interval):
                        self._reap_everything()
                finally:
                    os.close(fd)  # releases the flock
        except (OSError, WaypostError) as exc:
            _log.debug("file:// store: reaping failed: %s", exc)

    @staticmethod
    def _elected(fd: int, interval: float) -> bool:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or time.time() - st.st_mtime < interval:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # another process is reaping right now
        if time.time() - os.fstat(fd).st_mtime < interval:
            return False  # it just finished
        os.utime(fd)  # claimed: the others skip this interval
        return True

    def _reap_everything(self) -> None:
        """The elected pass over the whole store: one ``lstat`` per entry, only stale ones examined further.

        A live entry costs a system call and a comparison here (no name
        decoding, no checks): the pass is the one thing that grows with the
        store, and lists and watches report what is wrong with live entries.
        """
        for bucket_name, bucket in self._each_bucket(BUCKETS):
            try:
                names = bucket.names()
            except OSError:
                continue
            now = time.time()
            cutoff, lstat = now - self.stale_after, bucket.lstat
            for name in names:
                try:
                    st = lstat(name)
                except OSError:
                    continue
                if st is not None and st.st_mtime < cutoff:
                    self._examine(bucket, bucket_name, name, "", now)  # decodes, then reaps or warns
        self._reap_markers()

    # watching ------------------------------------------------------------------------------
    def watch(self, prefix: str, sink: WatchSink) -> WatchHandle:
        return self._watches.open(_FileWatch(self, prefix, sink))

    def _unregister_watch(self, watch: WatchLoop) -> None:
        with self._shared.lock:
            if watch in self._shared.watches:
                self._shared.watches.remove(watch)
        self._watches.forget(watch)

    def close(self) -> None:
        # Files stay: a closed backend without revoke_lease is a crashed process (they go stale).
        if not self._watches.close():
            return
        with self._shared.lock:  # only the descriptors that tell our files apart go
            for owned in self._owned.values():
                for _, _, fd in owned.values():
                    _close(fd)
            for fd in self._markers.values():
                _close(fd)
            self._owned.clear()
            self._markers.clear()
        self._tree.close()


_Change = tuple[str, str, bytes]  # ("put" | "delete", key, value)
_SAFETY_RESCAN = 30.0  # with inotify, a full (cheap, mtime-guarded) rescan this often all the same


class _Watched:
    """One bucket a watch covers: its inotify watch and what its last scan of the bucket found."""

    __slots__ = ("bucket", "inotify", "known", "relative", "scanned")

    def __init__(self, bucket: str, relative: str) -> None:
        self.bucket = bucket
        self.relative = relative  # the watch's prefix, relative to the bucket
        self.inotify: _Inotify | None = None
        self.known: dict[str, _Known] = {}
        self.scanned: tuple[int, float] | None = None  # the bucket's mtime_ns at the last rescan, and when

    def owns(self, key: str) -> bool:
        return key.startswith(self.bucket + "/")

    def close(self) -> None:
        if self.inotify is not None:
            self.inotify.close()
            self.inotify = None


class _FileWatch(WatchLoop):
    """One watch: this process's changes at once and in order; other processes' through inotify.

    With inotify the watch re-examines only the files named by its events
    (re-reading each one's current state, so event order never matters) and
    rescans a bucket only after an overflow or when the directory itself was
    replaced. Polling rescans every ``poll_interval``, skipping a bucket whose
    mtime says nothing was added, removed or renamed. A prefix reaching
    several buckets (``""``, ``v1/``) watches each. Each tick also takes part
    in the store-wide reap election.
    """

    thread_name = "waypost-file-watch"

    def __init__(self, backend: FileBackend, prefix: str, sink: WatchSink) -> None:
        super().__init__(prefix, sink, on_close=backend._unregister_watch)
        self._backend = backend
        self._local: deque[_Change] = deque()  # this process's changes, in the order they hit disk
        self._local_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._parts = [_Watched(bucket, relative) for bucket, relative in _covered(prefix)]
        self._next_rescan = 0.0

    def notify(self, kind: str, key: str, value: bytes) -> None:
        """A change made by this process (called under the shared lock, in disk order)."""
        if key.startswith(self.prefix):
            with self._local_lock:
                self._local.append((kind, key, value))
            self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"!")

    def _state(self) -> list[tuple[str, bytes]]:
        return sorted((key, known.value) for part in self._parts for key, known in part.known.items())

    # WatchLoop -------------------------------------------------------------------------------
    def snapshot(self) -> list[tuple[str, bytes]]:
        backend = self._backend
        buckets = [part.bucket for part in self._parts]
        with backend._shared.lock, backend._tree.using(*buckets) as dirs:
            # Under the writers' lock: no change of this process falls between the state read and
            # the queue, and inotify watches the very directory that was read.
            if self not in backend._shared.watches:
                backend._shared.watches.append(self)
            for part, directory in zip(self._parts, dirs, strict=True):
                part.close()
                part.inotify = _Inotify.open(directory) if backend.use_inotify else None
                part.known = backend._refresh_bucket(directory, part.bucket, part.relative, {})
                part.scanned = (os.fstat(directory.fd).st_mtime_ns, time.time())
            with self._local_lock:
                self._local.clear()
        self._next_rescan = time.monotonic() + self._rescan_period()
        return self._state()

    def _rescan_period(self) -> float:
        polled = any(part.inotify is None for part in self._parts)
        return self._backend.poll_interval if polled else _SAFETY_RESCAN

    def follow(self) -> None:
        backend = self._backend
        while not self.stopped:
            ready = self._wait(min(max(self._next_rescan - time.monotonic(), 0.0), backend.reap_interval / 2))
            self._apply_local()
            changed = False
            rescan_all = time.monotonic() >= self._next_rescan
            if rescan_all:
                self._next_rescan = time.monotonic() + self._rescan_period()
            for part in self._parts:
                names, overflow = part.inotify.read() if part.inotify is not None and part in ready else (set(), False)
                if overflow or rescan_all:
                    changed |= self._rescan(part, force=overflow)
                elif names:
                    self._recheck(part, names)
            if changed:
                self.state(self._state())
            backend._maybe_reap(backend.reap_interval)

    def _wait(self, timeout: float) -> list[_Watched]:
        """Wait for this process's changes or inotify events; the buckets inotify has events for."""
        watched = {part.inotify.fd: part for part in self._parts if part.inotify is not None}
        readable, _, _ = select.select([self._wake_r, *watched], [], [], timeout)
        if self._wake_r in readable:
            with contextlib.suppress(BlockingIOError, OSError):
                while os.read(self._wake_r, 4096):
                    pass
        return [watched[fd] for fd in readable if fd in watched]

    def _apply_local(self) -> None:
        while True:
            with self._local_lock:
                if not self._local:
                    return
                kind, key, value = self._local.popleft()
            part = next((part for part in self._parts if part.owns(key)), None)
            if part is None:
                continue
            if kind == "put":
                part.known[key] = _Known(None, value)
                self.put(key, value)
            elif part.known.pop(key, None) is not None:
                self.delete(key)

    def _rescan(self, part: _Watched, force: bool = False) -> bool:
        """Rescan one bucket (unless its mtime says nothing changed); ``True`` if it was rescanned."""
        backend = self._backend
        with backend._tree.using(part.bucket) as (bucket,):
            mtime = os.fstat(bucket.fd).st_mtime_ns
            if not force and self._unchanged_since_scan(part, mtime):
                return False
            now = time.time()
            part.known = backend._refresh_bucket(bucket, part.bucket, part.relative, part.known)
        part.scanned = (mtime, now)
        return True

    @staticmethod
    def _unchanged_since_scan(part: _Watched, mtime_ns: int) -> bool:
        # Names are added, removed and replaced only by link, unlink and rename, which all change the
        # directory's mtime. Its clock is coarse, so a change in the same tick as the last scan may
        # leave it unchanged: trust it only once it is a second older than that scan.
        if part.scanned is None:
            return False
        scanned_mtime, scanned_at = part.scanned
        return mtime_ns == scanned_mtime and scanned_at - mtime_ns / 1e9 > 1.0

    def _recheck(self, part: _Watched, names: Iterable[str]) -> None:
        backend = self._backend
        with backend._tree.using(part.bucket) as (bucket,):
            now = time.time()
            for name in sorted(names):
                key_in_bucket = decode_name(name)
                if key_in_bucket is None or not key_in_bucket.startswith(part.relative):
                    continue
                key = f"{part.bucket}/{key_in_bucket}"
                entry = backend._examine(bucket, part.bucket, name, part.relative, now)
                value = None if entry is None else self._value(part, bucket, entry)
                if value is not None:
                    self.put(key, value)
                elif part.known.pop(key, None) is not None:
                    self.delete(key)

    def _value(self, part: _Watched, bucket: _Dir, entry: _Entry) -> bytes | None:
        key, name, st = entry
        signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        old = part.known.get(key)
        if old is not None and old.signature == signature:
            return old.value
        value = self._backend._read(bucket, name, key)
        if value is not None:
            part.known[key] = _Known(signature, value)
        return value

    def interrupt(self) -> None:
        self._wake()

    def release(self) -> None:
        self._backend._unregister_watch(self)
        for part in self._parts:
            part.close()
        _close(self._wake_r)
        _close(self._wake_w)


# inotify, through libc (Linux): per-file events and an explicit overflow signal ------------------

_IN_MASK = (0x00000008 | 0x00000040 | 0x00000080 | 0x00000100 | 0x00000200  # close_write, moved, create, delete
                   | 0x00000400 | 0x00000800)  # the directory itself deleted or moved
_IN_ONLYDIR = 0x01000000
_IN_Q_OVERFLOW = 0x00004000
_IN_IGNORED = 0x00008000
_IN_SELF = 0x00000400 | 0x00000800 | _IN_IGNORED
_EVENT = struct.Struct("iIII")


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    except (OSError, AttributeError):
        return None
    return libc


def inotify_available() -> bool:
    return sys.platform.startswith("linux") and _libc() is not None and os.path.isdir("/proc/self/fd")


class _Inotify:
    """An inotify watch on one open directory (named through /proc/self/fd: the very inode we checked)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def open(cls, directory: _Dir) -> _Inotify | None:
        libc = _libc()
        if libc is None:
            return None
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            _log.info("file:// store: inotify unavailable (%s); polling", os.strerror(ctypes.get_errno()))
            return None
        if libc.inotify_add_watch(fd, f"/proc/self/fd/{directory.fd}".encode(), _IN_MASK | _IN_ONLYDIR) < 0:
            _log.info("file:// store: cannot watch %s with inotify (%s); polling", directory.path,
                      os.strerror(ctypes.get_errno()))
            os.close(fd)
            return None
        return cls(fd)

    def read(self) -> tuple[set[str], bool]:
        """The names events were reported for, and whether the watch must rescan (overflow, directory gone)."""
        names: set[str] = set()
        rescan = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except (BlockingIOError, InterruptedError):
                break
            offset = 0
            while offset + _EVENT.size <= len(data):
                _, mask, _, length = _EVENT.unpack_from(data, offset)
                raw = data[offset + _EVENT.size: offset + _EVENT.size + length].split(b"\0", 1)[0]
                offset += _EVENT.size + length
                rescan |= bool(mask & (_IN_Q_OVERFLOW | _IN_SELF))
                if raw:
                    names.add(os.fsdecode(raw))
        return names, rescan

    def close(self) -> None:
        _close(self.fd)


def _pick_watcher(choice: str) -> bool:
    available = inotify_available()
    if choice == "inotify" and not available:
        raise ConfigError("watcher=inotify needs Linux inotify (and /proc); use watcher=poll or auto")
    return available and choice != "poll"

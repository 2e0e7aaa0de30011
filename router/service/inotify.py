"""Linux inotify on the event loop: which names in a directory changed, without polling.

The router watches the directory of ``--graph FILE`` (a mounted ConfigMap swaps a ``..data``
symlink there) or the ``--graph-dir`` folder, and reloads only when the kernel says something
changed; 10,000 graph files then cost nothing while idle. ``Watcher.open`` returns None where
inotify cannot be had (another OS, the instance limit reached), and the registry polls instead.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import struct
from collections.abc import Callable
from pathlib import Path

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
)
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name
EVERYTHING = None  # passed to the callback: rescan all (queue overflow, the directory moved)


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None


class Watcher:
    """Calls ``changed(names)`` on the loop after a quiet ``settle`` seconds with the names
    that changed in ``directory`` (``None``: everything may have)."""

    def __init__(
        self,
        fd: int,
        changed: Callable[[set[str] | None], None],
        settle: float,
    ) -> None:
        self._fd = fd
        self._changed = changed
        self._settle = settle
        self._pending: set[str] | None = set()
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(fd, self._read)

    @classmethod
    def open(
        cls, directory: Path, changed: Callable[[set[str] | None], None], settle: float = 0.05
    ) -> Watcher | None:
        libc = _libc()
        if libc is None or not hasattr(libc, "inotify_init1"):
            return None
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            return None
        if libc.inotify_add_watch(fd, os.fsencode(directory), MASK) < 0:
            os.close(fd)
            return None
        return cls(fd, changed, settle)

    def _read(self) -> None:
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        offset = 0
        while offset + _EVENT.size <= len(data):
            _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
            offset += _EVENT.size + length
            if mask & (IN_Q_OVERFLOW | IN_DELETE_SELF | IN_MOVE_SELF) or self._pending is None:
                self._pending = None
            else:
                self._pending.add(os.fsdecode(name))
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(self._settle, self._flush)

    def _flush(self) -> None:
        self._timer = None
        pending, self._pending = self._pending, set()
        self._changed(pending)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._loop.remove_reader(self._fd)
        os.close(self._fd)

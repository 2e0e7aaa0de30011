"""The graphs a router serves, reloaded atomically when their files change.

A single graph (``--graph-json`` or ``--graph``) runs on every path, as in KServe. With
``--graph-dir`` each file serves at ``/graphs/<name>``. A changed file is compiled first and
swapped in only if valid; requests already running keep the plan they started with. While
serving, changed files are read and compiled in a thread and only swapped in on the event loop,
and a file whose bytes did not change keeps its plan (a ConfigMap's ``..data`` swap changes
every file's fingerprint).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from infergraph.router.engine.errors import GraphNotFound, GraphSpecError
from infergraph.router.engine.plan import GraphPlan, load_plan
from infergraph.router.service import inotify
from infergraph.router.settings import GraphSource

log = logging.getLogger("infergraph.router.registry")

GRAPH_SUFFIXES = (".yaml", ".yml", ".json")
GRAPHS_PREFIX = "/graphs/"

Fingerprint = tuple[str, int, int, int, int]


def fingerprint(path: Path) -> Fingerprint | None:
    """Identity of a file's current content, following symlinks (ConfigMap mounts swap them)."""
    try:
        stat = path.stat()
        return (os.path.realpath(path), stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size)
    except OSError:
        return None


def dir_fingerprints(directory: Path) -> dict[Path, Fingerprint | None]:
    """The graph files of a directory (sorted) and their fingerprints."""
    present = sorted(
        Path(entry.path)
        for entry in os.scandir(directory)
        if not entry.name.startswith(".") and entry.name.endswith(GRAPH_SUFFIXES)
    )
    return {path: fingerprint(path) for path in present}


MAX_GRAPH_FILE_BYTES = 8 * 1024 * 1024  # eight times what a ConfigMap may hold


def load_file(path: Path) -> GraphPlan:
    """Read and compile one graph file; its name is metadata.name or the file's stem."""
    return load_plan(read_file(path), default_name=path.stem, source=str(path))


def read_file(path: Path) -> bytes:
    """A graph file's bytes. Only a regular file of at most ``MAX_GRAPH_FILE_BYTES`` is read:
    opening a FIFO would wait for a writer, and a link to a device could be read without end."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(descriptor, "rb") as file:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                raise GraphSpecError([], source=f"{path} (not a regular file)")
            text = file.read(MAX_GRAPH_FILE_BYTES + 1)
    except OSError as exc:
        raise GraphSpecError([], source=f"{path} ({exc.strerror})") from exc
    if len(text) > MAX_GRAPH_FILE_BYTES:
        raise GraphSpecError([], source=f"{path} (over {MAX_GRAPH_FILE_BYTES} bytes)")
    return text


@dataclass(slots=True)
class _Loaded:
    plan: GraphPlan
    fingerprint: Fingerprint | None
    digest: bytes = b""  # of the file's bytes: a new fingerprint with the same bytes is no change


# What reading and compiling a changed file gave: its plan, or why it has none.
Prepared = dict[Path, _Loaded | GraphSpecError]


class GraphRegistry:
    """Holds the current plans; ``lookup`` is what a request sees."""

    def __init__(self, source: GraphSource, *, list_graphs: bool = False) -> None:
        self.source = source
        # Whether a 404 names the graphs served: off by default, so that a client cannot
        # enumerate the tenants of a shared router.
        self.list_graphs = list_graphs
        self._single: _Loaded | None = None
        self._files: dict[Path, _Loaded] = {}
        self._by_name: dict[str, GraphPlan] = {}

    def load(self) -> None:
        """Load every graph now; raises ``GraphSpecError`` for an invalid single graph."""
        source = self.source
        if source.graph_json is not None:
            plan = load_plan(source.graph_json, default_name="graph", source="--graph-json")
            self._single = _Loaded(plan, None)
        elif source.graph_file is not None:
            print_ = fingerprint(source.graph_file)
            self._single = _Loaded(load_file(source.graph_file), print_)
        elif source.graph_dir is not None:
            if not source.graph_dir.is_dir():
                raise GraphSpecError([], source=f"{source.graph_dir} (not a directory)")
            self.rescan_dir()

    @property
    def plans(self) -> list[GraphPlan]:
        if self._single is not None:
            return [self._single.plan]
        return list(self._by_name.values())

    def lookup(self, path: str) -> GraphPlan:
        if self._single is not None:
            return self._single.plan
        if path.startswith(GRAPHS_PREFIX):
            name = path[len(GRAPHS_PREFIX) :].split("/", 1)[0]
            plan = self._by_name.get(name)
            if plan is not None:
                return plan
            raise GraphNotFound(f"no graph named {name!r}{self._served('serving')}")
        raise GraphNotFound(f"POST to {GRAPHS_PREFIX}<name>{self._served('graphs')}")

    def _served(self, label: str) -> str:
        if not self.list_graphs:
            return ""
        names = ", ".join(sorted(self._by_name))
        return f" ({label}: {names})" if label == "serving" else f"; {label}: {names}"

    def reload_single(self) -> bool:
        """Reload ``--graph FILE`` if it changed; True when a new plan was swapped in."""
        path = self.source.graph_file
        if path is None or self._single is None:
            return False
        current = fingerprint(path)
        if current is None or current == self._single.fingerprint:
            return False
        try:
            plan = load_file(path)
        except GraphSpecError as exc:
            log.error(
                "graph file changed but is invalid, still serving the previous graph: %s", exc
            )
            self._single = _Loaded(self._single.plan, current)
            return False
        self._single = _Loaded(plan, current)
        log.info("reloaded graph %s from %s", plan.name, path)
        return True

    def rescan_dir(
        self,
        found: dict[Path, Fingerprint | None] | None = None,
        prepared: Prepared | None = None,
    ) -> bool:
        """Pick up added, changed and removed files of ``--graph-dir``; True if anything changed.

        ``found``: the directory's files and fingerprints, and ``prepared``, what ``prepare``
        made of them, if already taken (``watch`` takes both in a thread: a thousand stat calls
        would stall the event loop for milliseconds, compiling a thousand graphs for seconds)."""
        directory = self.source.graph_dir
        if directory is None:
            return False
        if found is None:
            found = dir_fingerprints(directory)
        return self._merge(found, complete=True, prepared=prepared)

    def file_fingerprints(self, names: set[str]) -> dict[Path, Fingerprint | None]:
        """The fingerprints of these files of ``--graph-dir`` (graph files only): those inotify
        named, for ``watch`` to look at again."""
        directory = self.source.graph_dir
        if directory is None:
            return {}
        return {
            directory / name: fingerprint(directory / name)
            for name in names
            if not name.startswith(".") and name.endswith(GRAPH_SUFFIXES)
        }

    def prepare(self, found: dict[Path, Fingerprint | None]) -> Prepared:
        """Read and compile the files of ``found`` whose fingerprint changed, keeping the plan
        of one whose bytes did not (a ConfigMap's ``..data`` swap changes every fingerprint).
        No state changes here, so ``watch`` runs it in a thread, off the event loop."""
        prepared: Prepared = {}
        for path, current in found.items():
            previous = self._files.get(path)
            if current is None or (previous is not None and previous.fingerprint == current):
                continue
            try:
                text = read_file(path)
                digest = hashlib.sha256(text).digest()
                if previous is not None and previous.digest == digest:
                    prepared[path] = _Loaded(previous.plan, current, digest)
                    continue
                plan = load_plan(text, default_name=path.stem, source=str(path))
                prepared[path] = _Loaded(plan, current, digest)
            except GraphSpecError as exc:
                prepared[path] = exc
        return prepared

    def _merge(
        self,
        found: dict[Path, Fingerprint | None],
        *,
        complete: bool,
        prepared: Prepared | None = None,
    ) -> bool:
        """Apply files and their fingerprints (None: the file is gone), with what ``prepare``
        made of them (made here when not given). ``complete``: ``found`` is the whole
        directory, so files missing from it are gone too."""
        if prepared is None:
            prepared = self.prepare(found)
        changed = False
        files: dict[Path, _Loaded] = {} if complete else dict(self._files)
        for path, current in found.items():
            previous = self._files.get(path)
            if current is None and not complete:
                changed |= files.pop(path, None) is not None
                continue
            outcome = prepared.get(path)
            if outcome is None:  # unchanged, or listed but gone before it could be looked at
                if previous is not None:
                    files[path] = previous
                continue
            if isinstance(outcome, _Loaded):
                files[path] = outcome
                if previous is None or outcome.plan is not previous.plan:
                    changed = True
                    log.info("loaded graph %s from %s", outcome.plan.name, path)
            elif previous is not None:
                log.error(
                    "%s changed but is invalid, keeping the previous graph: %s", path, outcome
                )
                files[path] = _Loaded(previous.plan, current, previous.digest)
            else:
                files.pop(path, None)
                log.error("skipping invalid graph file: %s", outcome)
        changed |= set(files) != set(self._files)
        by_name: dict[str, GraphPlan] = {}
        for path in sorted(files):
            name = files[path].plan.name
            if name in by_name:
                log.error(
                    "%s: graph name %r is already served from another file; skipped", path, name
                )
                continue
            by_name[name] = files[path].plan
        self._files = files
        self._by_name = by_name
        return changed

    async def watch(self, interval: float) -> None:
        """Reload when the graph file(s) change, until cancelled: on inotify's word where the
        kernel has it, else by polling every ``interval`` seconds."""
        source = self.source
        directory = source.graph_dir
        if directory is None and source.graph_file is not None:
            directory = source.graph_file.parent
        if directory is None:
            return
        changes: asyncio.Queue[set[str] | None] = asyncio.Queue()
        watcher = inotify.Watcher.open(directory, changes.put_nowait)
        if watcher is None:
            log.info("inotify is not available: polling graph files every %.1f s", interval)
            await self._poll(interval)
            return
        try:
            while True:
                names = await changes.get()
                try:
                    await self._changed(names)
                except OSError as exc:
                    log.error("cannot check graph files for changes: %s", exc)
        finally:
            watcher.close()

    async def _changed(self, names: set[str] | None) -> None:
        if self.source.graph_file is not None:
            self.reload_single()  # cheap: one stat; a ConfigMap swaps its ..data link
        elif names is None or any(name.startswith(".") for name in names):
            await self._rescan_off_loop()
        else:
            found = self.file_fingerprints(names)
            if found:
                prepared = await asyncio.to_thread(self.prepare, found)
                self._merge(found, complete=False, prepared=prepared)

    async def _rescan_off_loop(self) -> None:
        """Rescan ``--graph-dir``: the listing, reading and compiling in a thread, the swap on
        the loop (requests never wait for a compile)."""
        assert self.source.graph_dir is not None
        found = await asyncio.to_thread(dir_fingerprints, self.source.graph_dir)
        prepared = await asyncio.to_thread(self.prepare, found)
        self.rescan_dir(found, prepared)

    async def _poll(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                if self.source.graph_file is not None:
                    self.reload_single()
                else:
                    await self._rescan_off_loop()
            except OSError as exc:
                log.error("cannot check graph files for changes: %s", exc)

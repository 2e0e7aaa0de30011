"""Graph files are reloaded on inotify's word, not by polling: with a reload interval of an
hour, an added, edited or removed file in --graph-dir, and a ConfigMap-style symlink swap under
--graph FILE, are served within a second."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from infergraph.router.engine.errors import GraphNotFound
from infergraph.router.service.registry import GraphRegistry
from infergraph.router.settings import GraphSource

HOUR = 3600.0


def write_graph(path: Path, url: str, name: str | None = None) -> None:
    document = {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "InferenceGraph",
        "metadata": {"name": name or path.stem},
        "spec": {"nodes": {"root": {"routerType": "Sequence", "steps": [{"serviceUrl": url}]}}},
    }
    path.write_text(json.dumps(document))


def first_url(registry: GraphRegistry, path: str) -> str:
    service = registry.lookup(path).root.steps[0].service
    assert service is not None
    return service.url


async def eventually(check: Callable[[], bool], within: float = 1.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "not reloaded within a second"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def watching(registry: GraphRegistry) -> AsyncIterator[None]:
    registry.load()
    task = asyncio.ensure_future(registry.watch(HOUR))
    await asyncio.sleep(0.05)  # the watch is set up
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def served(registry: GraphRegistry, name: str) -> bool:
    try:
        registry.lookup(f"/graphs/{name}")
    except GraphNotFound:
        return False
    return True


async def test_graph_dir_changes_are_picked_up_without_polling(tmp_path: Path) -> None:
    write_graph(tmp_path / "a.json", "http://a/")
    registry = GraphRegistry(GraphSource(graph_dir=tmp_path))
    async with watching(registry):
        write_graph(tmp_path / "b.json", "http://b/")
        await eventually(lambda: served(registry, "b"))
        write_graph(tmp_path / "a.json", "http://a2/")
        await eventually(lambda: first_url(registry, "/graphs/a") == "http://a2/")
        (tmp_path / "b.json").unlink()
        await eventually(lambda: not served(registry, "b"))
        assert served(registry, "a")


async def test_a_configmap_symlink_swap_reloads_the_single_graph(tmp_path: Path) -> None:
    """A mounted ConfigMap: graph.json -> ..data/graph.json, ..data -> a timestamped folder
    that the kubelet replaces by renaming a new ..data link over it."""
    first = tmp_path / "..2026_12_01_a"
    first.mkdir()
    write_graph(first / "graph.json", "http://one/", "g")
    (tmp_path / "..data").symlink_to(first.name)
    (tmp_path / "graph.json").symlink_to("..data/graph.json")
    registry = GraphRegistry(GraphSource(graph_file=tmp_path / "graph.json"))
    async with watching(registry):
        assert first_url(registry, "/") == "http://one/"
        second = tmp_path / "..2026_12_01_b"
        second.mkdir()
        write_graph(second / "graph.json", "http://two/", "g")
        (tmp_path / "..data_tmp").symlink_to(second.name)
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
        await eventually(lambda: first_url(registry, "/") == "http://two/")


@pytest.mark.parametrize("count", [200])
async def test_one_changed_file_among_many_is_loaded_alone(tmp_path: Path, count: int) -> None:
    for i in range(count):
        write_graph(tmp_path / f"g{i}.json", f"http://g{i}/")
    registry = GraphRegistry(GraphSource(graph_dir=tmp_path))
    async with watching(registry):
        before = {name: registry.lookup(f"/graphs/{name}") for name in ("g1", "g2")}
        write_graph(tmp_path / "g1.json", "http://changed/")
        await eventually(lambda: first_url(registry, "/graphs/g1") == "http://changed/")
        assert registry.lookup("/graphs/g2") is before["g2"]  # not recompiled
        assert len(registry.plans) == count


def test_a_fifo_or_a_huge_file_is_skipped_and_the_other_graphs_load(tmp_path: Path) -> None:
    """Opening a FIFO waited for a writer, and a link to /dev/zero read until memory ran out,
    on the event loop. Only regular files of at most 8 MiB are read now."""
    write_graph(tmp_path / "good.json", "http://good/")
    os.mkfifo(tmp_path / "stuck.yaml")
    (tmp_path / "endless.yaml").symlink_to("/dev/zero")
    (tmp_path / "huge.json").write_bytes(b" " * (8 * 1024 * 1024 + 1))
    registry = GraphRegistry(GraphSource(graph_dir=tmp_path))
    registry.load()
    assert [plan.name for plan in registry.plans] == ["good"]


async def test_a_configmap_swap_compiles_again_only_the_files_whose_bytes_changed(
    tmp_path: Path,
) -> None:
    """A mounted ConfigMap as --graph-dir: every file is a link through ..data, so a swap
    changes every fingerprint, and every graph was compiled again on the event loop (1.3 s
    for 100 graphs of 100 steps). Now files whose bytes are the same keep their plans, and
    the others are compiled in a thread."""

    def version(tag: str, urls: dict[str, str]) -> Path:
        folder = tmp_path / f"..{tag}"
        folder.mkdir()
        for name, url in urls.items():
            write_graph(folder / f"{name}.json", url)
        return folder

    (tmp_path / "..data").symlink_to(version("v1", {"a": "http://a/", "b": "http://b/"}).name)
    for name in ("a", "b"):
        (tmp_path / f"{name}.json").symlink_to(f"..data/{name}.json")
    registry = GraphRegistry(GraphSource(graph_dir=tmp_path))
    async with watching(registry):
        a, b = registry.lookup("/graphs/a"), registry.lookup("/graphs/b")
        second = version("v2", {"a": "http://a/", "b": "http://b2/"})
        (tmp_path / "..data_tmp").symlink_to(second.name)
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
        await eventually(lambda: first_url(registry, "/graphs/b") == "http://b2/")
        assert registry.lookup("/graphs/a") is a
        assert registry.lookup("/graphs/b") is not b

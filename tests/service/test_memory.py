"""The router pins glibc's mmap threshold unless the user tuned the allocator already."""

from __future__ import annotations

import platform

import pytest

from infergraph.router.cli import allocator_tuned
from infergraph.router.service import memory


def test_the_threshold_is_pinned_where_the_c_library_is_glibc() -> None:
    assert memory.pin_mmap_threshold(1 << 20) is (platform.libc_ver()[0] == "glibc")


@pytest.mark.parametrize(
    ("env", "tuned"),
    [
        ({}, False),
        ({"MALLOC_MMAP_THRESHOLD_": "65536"}, True),
        ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}, True),
        ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, False),
    ],
)
def test_a_users_own_setting_wins(env: dict[str, str], tuned: bool) -> None:
    assert allocator_tuned(env) is tuned

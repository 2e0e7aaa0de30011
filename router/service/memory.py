"""Large bodies in memory mappings of their own, returned to the system when freed.

glibc serves blocks of 128 KiB and up from fresh mappings, but raises that threshold to the
size of each such block freed (up to 32 MiB). After the first large body, later ones come from
the heap: a body that grows in place there is copied when it must move, and freed space stays
in the process. Pinning the threshold (``mallopt``, which also stops the raising) keeps every
body above ``MMAP_THRESHOLD`` in a mapping that grows by remapping and is unmapped when freed.

Nothing changes where the C library is not glibc, or when the user tunes it already: the
settings then carry no threshold (``cli.py``).
"""

from __future__ import annotations

import ctypes
import platform

_M_MMAP_THRESHOLD = -3  # malloc.h


def pin_mmap_threshold(threshold: int) -> bool:
    """Pin glibc's mmap threshold at ``threshold`` bytes; whether it was done."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False

"""The worker's hold on glibc's allocator: large blocks freed after a burst go back to the
system (`runtime.pin_mmap_threshold`), so memory at rest is the state, not the burst."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from cancelwatch.worker import runtime

PROBE = textwrap.dedent("""
    import ctypes
    import sys
    from cancelwatch.worker import runtime

    def in_heap(address):
        for line in open("/proc/self/maps"):
            if line.rstrip().endswith("[heap]"):
                low, high = (int(part, 16) for part in line.split()[0].split("-"))
                return low <= address < high
        return False

    if sys.argv[1] == "pinned":
        assert runtime.pin_mmap_threshold()
    big = bytearray(8 * 1024 * 1024)     # mapped on its own; freeing it raises glibc's threshold
    del big
    block = bytearray(512 * 1024)        # a fetch buffer's size
    address = ctypes.addressof((ctypes.c_char * len(block)).from_buffer(block))
    print("heap" if in_heap(address) else "mapped")
""")


def probe(mode: str) -> str:
    return subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.skipif(runtime._libc() is None, reason="the C library is not glibc: nothing to pin")
def test_a_pinned_threshold_maps_large_blocks_after_a_larger_one_was_freed():
    # glibc's default: freeing the 8 MiB block raised the threshold past 512 KiB, so the next
    # block comes from the heap (where it keeps pages resident); pinned, it is mapped on its own.
    assert probe("default") == "heap"
    assert probe("pinned") == "mapped"

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


ARENAS_PROBE = textwrap.dedent("""
    import ctypes
    import re
    import sys
    import tempfile
    import threading
    from cancelwatch.worker import runtime

    if sys.argv[1] == "limited":
        assert runtime.limit_arenas()
    threads = 6
    ready = threading.Barrier(threads + 1)
    done = threading.Event()
    def allocate():
        held = [bytearray(4096) for _ in range(64)]      # glibc's malloc: above Python's small objects
        ready.wait()
        done.wait()
    started = [threading.Thread(target=allocate) for _ in range(threads)]
    for thread in started:
        thread.start()
    ready.wait()
    libc = ctypes.CDLL("libc.so.6")
    libc.fopen.restype = ctypes.c_void_p
    with tempfile.NamedTemporaryFile("r") as out:
        stream = libc.fopen(out.name.encode(), b"w")
        libc.malloc_info(0, ctypes.c_void_p(stream))
        libc.fclose(ctypes.c_void_p(stream))
        print(len(re.findall(r'<heap nr="', out.read())))
    done.set()
""")


@pytest.mark.skipif(runtime._libc() is None, reason="the C library is not glibc: no arenas to limit")
def test_limited_arenas_keep_the_threads_to_two_heaps():
    def heaps(mode: str) -> int:
        return int(subprocess.run([sys.executable, "-c", ARENAS_PROBE, mode], capture_output=True, text=True,
                                  check=True).stdout.strip())
    assert heaps("default") > runtime.ARENAS          # glibc's default: a heap per allocating thread
    assert heaps("limited") <= runtime.ARENAS

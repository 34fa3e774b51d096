"""Which orders the order index may hold: a Bloom filter kept in memory beside it.

Most events that miss their own bucket are new orders, which the index does not
hold; asking the index (a RocksDB read in the worker) for each of them cost
about 19,000 CPU instructions, and with half the events a new order, an eighth
of the worker's own work per event. The filter answers "not there" for nearly all of them from memory, and "maybe" for
every key ever added (never "not there" for one), so only a maybe asks the index.

It is a blocked Bloom filter: a key sets two of the eight bits of one byte, both
chosen by its hash, so a question costs one hash (cached by the key) and one
byte read. A key is never taken out (the index deletes expired orders, the
filter keeps their bits: a maybe more, never a wrong answer); the filter is
built again with every rebuild of the book, sized for the orders loaded. It
grows by layers: when the newest layer holds its capacity, one `GROWTH` times
as large is added, so the share of false maybes stays within `FALSE_MAYBE` per
layer (a few layers) whatever the number of orders.

Pure: the keys are bytes, hashed with Python's `hash` (process-local, as the
filter is). `BYTES_PER_KEY` to twice that per key of capacity.
"""

from __future__ import annotations

from typing import Iterable

BYTES_PER_KEY = 4          # at least; two bits of a byte a key: about 1.2% false maybes at capacity
FALSE_MAYBE = 0.012
FIRST_CAPACITY = 1 << 16   # keys of the first layer (256 KiB)
GROWTH = 4                 # each layer's capacity over the one before
# the two bits a key sets in its byte, by six bits of its hash: one of the 28 pairs of distinct bits
_PAIRS = [(1 << low) | (1 << high) for high in range(8) for low in range(high)]
_PATTERNS = tuple(_PAIRS[n % len(_PAIRS)] for n in range(64))
_PATTERN_SHIFT = 58        # the hash's top bits choose the pattern, its low bits the byte


class OrderFilter:
    """A set of bytes keys that may answer "maybe" for a key never added, never "no" for
    one that was."""

    __slots__ = ("_layers", "_newest", "_capacity", "_count", "_added")

    def __init__(self, capacity: int = FIRST_CAPACITY) -> None:
        self._layers: list[bytearray] = []
        self._added = 0         # keys in the layers before the newest
        self._add_layer(max(1, capacity))

    def _add_layer(self, capacity: int) -> None:
        self._capacity = capacity
        self._count = 0         # keys in the newest layer
        self._newest = bytearray(1 << max(3, (capacity * BYTES_PER_KEY - 1).bit_length()))
        self._layers.append(self._newest)

    def add(self, key: bytes) -> None:
        self.update((key,))

    def update(self, keys: Iterable[bytes]) -> None:
        bits, count, capacity, patterns = self._newest, self._count, self._capacity, _PATTERNS
        mask = len(bits) - 1
        for key in keys:
            if count >= capacity:
                self._added += count
                self._add_layer(capacity * GROWTH)
                bits, count, capacity = self._newest, 0, self._capacity
                mask = len(bits) - 1
            count += 1
            hashed = hash(key)
            bits[hashed & mask] |= patterns[(hashed >> _PATTERN_SHIFT) & 63]
        self._count = count

    def __contains__(self, key: bytes) -> bool:
        hashed = hash(key)
        pattern = _PATTERNS[(hashed >> _PATTERN_SHIFT) & 63]
        for bits in self._layers:
            if bits[hashed & (len(bits) - 1)] & pattern == pattern:
                return True
        return False

    def __len__(self) -> int:
        """Keys added (a key added twice counts twice)."""
        return self._added + self._count

    @property
    def layers(self) -> int:
        return len(self._layers)

    @property
    def bytes(self) -> int:
        """Memory of its bit arrays."""
        return sum(map(len, self._layers))

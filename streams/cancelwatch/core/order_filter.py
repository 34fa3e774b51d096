"""Which orders the order index may hold: a Bloom filter kept in memory beside it.

Most events that miss their own bucket are new orders, which the index does not
hold; asking the index (a RocksDB read in the worker) for each of them cost
about 19,000 CPU instructions, and with half the events a new order, an eighth
of the worker's own work per event. The filter answers "not there" for nearly
all of them from memory, and "maybe" for every key ever added (never "not
there" for one), so only a maybe asks the index.

It is a blocked Bloom filter: a key sets two of the eight bits of one byte, both
chosen by its hash, so a question costs one hash (cached by the key) and one
byte read per layer. It is built again with every rebuild of the book, sized
for the orders loaded, and grows by layers: when the newest layer holds its
capacity, one as large as the keys held so far is added, so the share of
false maybes stays within `FALSE_MAYBE` per layer. A key is never taken out,
but each layer remembers the newest purchase bucket among its keys: once the
order index has expired that bucket (`Book.expire`), every key of the layer is
gone from the index too, and the layer is dropped. So a worker that runs for
months holds the layers of about one retention of orders, not every order it
ever saw.

Pure: the keys are bytes, hashed with Python's `hash` (process-local, as the
filter is). `BYTES_PER_KEY` to twice that per key of capacity.
"""

from __future__ import annotations

from typing import Iterable

BYTES_PER_KEY = 4          # at least; two bits of a byte a key: about 1.2% false maybes at capacity
FALSE_MAYBE = 0.012
FIRST_CAPACITY = 1 << 16   # keys of the first layer (256 KiB), and of any layer at least
# the two bits a key sets in its byte, by six bits of its hash: one of the 28 pairs of distinct bits
_PAIRS = [(1 << low) | (1 << high) for high in range(8) for low in range(high)]
_PATTERNS = tuple(_PAIRS[n % len(_PAIRS)] for n in range(64))
_PATTERN_SHIFT = 58        # the hash's top bits choose the pattern, its low bits the byte


class OrderFilter:
    """A set of bytes keys, each added with its purchase bucket, that may answer "maybe" for
    a key never added, never "no" for one that was (until `forget_before` its bucket)."""

    __slots__ = ("_layers", "_counts", "_newest_buckets", "_capacity")

    def __init__(self, capacity: int = FIRST_CAPACITY) -> None:
        self._layers: list[bytearray] = []
        self._counts: list[int] = []            # keys in each layer
        self._newest_buckets: list[int] = []    # the newest purchase bucket among each layer's keys
        self._add_layer(max(1, capacity))

    def _add_layer(self, capacity: int) -> None:
        self._capacity = capacity               # of the newest layer
        self._layers.append(bytearray(1 << max(3, (capacity * BYTES_PER_KEY - 1).bit_length())))
        self._counts.append(0)
        self._newest_buckets.append(-1)

    def add(self, key: bytes, bucket: int) -> None:
        self.update(((key, bucket),))

    def update(self, items: Iterable[tuple[bytes, int]]) -> None:
        """Add (key, purchase bucket) pairs."""
        bits, count, newest, capacity = self._layers[-1], self._counts[-1], self._newest_buckets[-1], self._capacity
        mask, patterns = len(bits) - 1, _PATTERNS
        for key, bucket in items:
            if count >= capacity:
                self._counts[-1], self._newest_buckets[-1] = count, newest
                self._add_layer(max(FIRST_CAPACITY, len(self)))
                bits, count, newest, capacity = self._layers[-1], 0, -1, self._capacity
                mask = len(bits) - 1
            count += 1
            if bucket > newest:
                newest = bucket
            hashed = hash(key)
            bits[hashed & mask] |= patterns[(hashed >> _PATTERN_SHIFT) & 63]
        self._counts[-1], self._newest_buckets[-1] = count, newest

    def forget_before(self, oldest_bucket: int) -> int:
        """Drop the layers (but the newest) all of whose keys' buckets are older than
        `oldest_bucket` (expired); returns the keys dropped."""
        dropped = 0
        for index in range(len(self._layers) - 2, -1, -1):
            if self._newest_buckets[index] < oldest_bucket:
                dropped += self._counts[index]
                del self._layers[index], self._counts[index], self._newest_buckets[index]
        return dropped

    def __contains__(self, key: bytes) -> bool:
        hashed = hash(key)
        pattern = _PATTERNS[(hashed >> _PATTERN_SHIFT) & 63]
        for bits in self._layers:
            if bits[hashed & (len(bits) - 1)] & pattern == pattern:
                return True
        return False

    def __len__(self) -> int:
        """Keys held (a key added twice counts twice)."""
        return sum(self._counts)

    @property
    def layers(self) -> int:
        return len(self._layers)

    @property
    def bytes(self) -> int:
        """Memory of its bit arrays."""
        return sum(map(len, self._layers))

"""Sharding plan: the flat parameter vector cut into contiguous shards, one per server, equal in bytes.

Cutting the flat vector (rather than assigning whole tensors) balances bytes exactly, whatever the
tensor sizes: a large tensor is split across servers, small ones share a shard.
"""

from __future__ import annotations

from dataclasses import dataclass

# Shard boundaries fall on multiples of this many elements (64 bytes of float32): every shard
# starts on a cache line, and shards still differ by at most one block.
ALIGN_ELEMENTS = 16


@dataclass(frozen=True)
class Shard:
    index: int
    server: int          # rank that owns it
    start: int           # first element in the flat vector
    stop: int            # one past the last element

    @property
    def size(self) -> int:
        return self.stop - self.start


def plan_shards(n_elements: int, servers: tuple[int, ...] | list[int]) -> list[Shard]:
    """Contiguous shards of [0, n_elements), one per server in the given order, balanced by size.

    Returns len(servers) shards covering the vector without gap or overlap, sizes within
    ALIGN_ELEMENTS of each other. The spare blocks go to the last shards, so the one holding the
    vector's short final block is among them. With fewer blocks than servers, the first servers
    get empty shards.
    """
    if not servers:
        raise ValueError("at least one server is needed")
    if n_elements < 0:
        raise ValueError(f"n_elements must be >= 0, got {n_elements}")
    n_blocks = -(-n_elements // ALIGN_ELEMENTS)
    base, extra = divmod(n_blocks, len(servers))
    shards, start = [], 0
    for i, server in enumerate(servers):
        blocks = base + (1 if i >= len(servers) - extra else 0)
        stop = min(n_elements, start + blocks * ALIGN_ELEMENTS)
        shards.append(Shard(i, server, start, stop))
        start = stop
    return shards


def tensor_pieces(sizes: list[int], shard: Shard) -> list[tuple[int, int, int]]:
    """Which parts of which tensors a shard holds: (tensor index, first element, last element + 1)."""
    pieces, offset = [], 0
    for t, n in enumerate(sizes):
        lo, hi = max(offset, shard.start), min(offset + n, shard.stop)
        if lo < hi:
            pieces.append((t, lo - offset, hi - offset))
        offset += n
    return pieces

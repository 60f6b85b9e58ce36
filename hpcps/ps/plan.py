"""The message plan: every message of one iteration, who sends which bytes to whom, in which order.

Pure logic, read by everything that moves or models the parameter exchange: the exchange itself
(hpcps/ps/exchange.py), the emulated network (hpcps/emulate), the simulator (hpcps/sim) and the
tuner's network model. What moves is decided here and nowhere else.

The flat parameter vector is cut into one contiguous shard per server (hpcps/ps/sharding.py), and each
shard into pieces of at most the job's bucket size. A piece is the unit of everything that overlaps:

- push   each worker sends a piece's gradient as soon as the backward pass has produced all of it.
         Backward runs from the last layer to the first, so pieces are pushed from the end of the flat
         vector to its start (`push_order`).
- update a server aggregates a piece and steps the optimiser on it as soon as every worker's push of
         that piece is in, and sends the new values at once.
- pull   a worker receives pieces in the order the forward pass needs them (`pull_order`, the start of
         the vector first) and starts the forward pass on what has arrived.

Messages between a rank and itself (a server that is also a worker) are copies and are in the plan
with src == dst, so that every consumer sees the same list.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hpcps.ps.sharding import ALIGN_ELEMENTS, Shard, plan_shards

BYTES_PER_ELEMENT = 4                      # float32 parameters and gradients
DEFAULT_BUCKET_BYTES = 4 * 1024 * 1024     # BytePS's partition size: big enough to reach bandwidth
PULL, PUSH = "pull", "push"


@dataclass(frozen=True)
class Piece:
    index: int           # position in the flat vector, from its start: the forward pass's order
    shard: int
    server: int
    start: int           # first element in the flat vector
    stop: int            # one past the last

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Message:
    kind: str            # PULL (server to worker) or PUSH (worker to server)
    piece: int
    src: int             # rank
    dst: int             # rank
    elements: int
    nbytes: int          # bytes on the wire (a codec may make it fewer than 4 per element)

    @property
    def local(self) -> bool:
        """A rank serving itself: a copy, not a message."""
        return self.src == self.dst


def cut_pieces(shards: Sequence[Shard], bucket_elements: int) -> list[Piece]:
    """Each non-empty shard cut into pieces of at most bucket_elements (a multiple of ALIGN_ELEMENTS),
    as equal as that allows. Returns the pieces in flat-vector order."""
    if bucket_elements < 1:
        raise ValueError(f"bucket_elements must be >= 1, got {bucket_elements}")
    pieces: list[Piece] = []
    for s in shards:
        if s.size == 0:
            continue
        n = -(-s.size // bucket_elements)
        blocks = -(-s.size // ALIGN_ELEMENTS)
        base, extra = divmod(blocks, n)
        start = s.start
        for i in range(n):
            stop = min(s.stop, start + (base + (1 if i < extra else 0)) * ALIGN_ELEMENTS)
            pieces.append(Piece(len(pieces), s.index, s.server, start, stop))
            start = stop
    return pieces


@dataclass(frozen=True)
class MessagePlan:
    """The messages of one iteration for a schedule. Build with MessagePlan.build()."""
    n_elements: int
    shards: tuple[Shard, ...]
    pieces: tuple[Piece, ...]
    workers: tuple[int, ...]             # worker ranks, schedule order
    push_nbytes: tuple[tuple[int, ...], ...]   # [worker row][piece]: encoded bytes of that push
    pull_nbytes: tuple[int, ...]               # [piece]: encoded bytes of each pull of it

    @staticmethod
    def build(n_elements: int, servers: Sequence[int], workers: Sequence[int],
              bucket_bytes: int = DEFAULT_BUCKET_BYTES, push_nbytes=None, pull_nbytes=None) -> MessagePlan:
        """push_nbytes(worker_row, elements) -> bytes on the wire of one push; pull_nbytes(elements) -> of
        one pull (default 4 per element, float32)."""
        shards = tuple(plan_shards(n_elements, list(servers)))
        bucket = max(ALIGN_ELEMENTS, (int(bucket_bytes) // BYTES_PER_ELEMENT) // ALIGN_ELEMENTS * ALIGN_ELEMENTS)
        pieces = tuple(cut_pieces(shards, bucket))
        size = push_nbytes or (lambda _row, n: BYTES_PER_ELEMENT * n)
        table = tuple(tuple(int(size(row, p.size)) for p in pieces) for row in range(len(workers)))
        pull_size = pull_nbytes or (lambda n: BYTES_PER_ELEMENT * n)
        pulls = tuple(int(pull_size(p.size)) for p in pieces)
        return MessagePlan(n_elements, shards, pieces, tuple(workers), table, pulls)

    # -- orders -----------------------------------------------------------------------------------------
    def pull_order(self) -> list[Piece]:
        """Pieces in the order the forward pass reads them (the start of the flat vector first)."""
        return list(self.pieces)

    def push_order(self) -> list[Piece]:
        """Pieces in the order the backward pass completes them (the end of the flat vector first)."""
        return list(reversed(self.pieces))

    # -- messages -----------------------------------------------------------------------------------------
    def pulls(self) -> list[Message]:
        """Every pull of one iteration, in the order servers send them: piece by piece in forward order."""
        return [Message(PULL, p.index, p.server, w, p.size, self.pull_nbytes[p.index])
                for p in self.pull_order() for w in self.workers]

    def pushes(self) -> list[Message]:
        """Every push of one iteration, piece by piece in backward order."""
        return [Message(PUSH, p.index, w, p.server, p.size, self.push_nbytes[row][p.index])
                for p in self.push_order() for row, w in enumerate(self.workers)]

    def messages(self) -> list[Message]:
        return self.pulls() + self.pushes()

    def pieces_of_server(self, rank: int) -> list[Piece]:
        return [p for p in self.pieces if p.server == rank]

    def worker_row(self, rank: int) -> int | None:
        return self.workers.index(rank) if rank in self.workers else None

    def push_bytes(self, raw: bool = False) -> int:
        """Bytes of one iteration's pushes between ranks (copies to a rank's own server left out): as
        encoded, or raw: as float32 before encoding."""
        return sum(BYTES_PER_ELEMENT * m.elements if raw else m.nbytes for m in self.pushes() if not m.local)

    def pull_bytes(self, raw: bool = False) -> int:
        """Bytes of one iteration's pulls between ranks (a rank's own worker left out): as encoded, or
        raw: as float32."""
        return sum(BYTES_PER_ELEMENT * m.elements if raw else m.nbytes for m in self.pulls() if not m.local)

    def network_bytes(self, node_of: Sequence[int] | None = None) -> int:
        """Bytes of one iteration that leave a rank (node_of: rank -> node; then those that leave a node)."""
        def crosses(m: Message) -> bool:
            return (m.src != m.dst) if node_of is None else node_of[m.src] != node_of[m.dst]
        return sum(m.nbytes for m in self.messages() if crosses(m))


def plan_for_job(job, schedule, n_elements: int) -> MessagePlan:
    """The plan of a job (hpcps.config.Job: bucket size, codecs) under a rank-level schedule, with each
    worker's encoded push bytes and the encoded pull bytes: what the runtime exchanges, and what a
    model of it should read."""
    from hpcps.ps.codec import pull_nbytes, push_nbytes, worker_codec_names
    return MessagePlan.build(n_elements, schedule.servers, [w.rank for w in schedule.workers],
                             bucket_bytes=int(job.exchange.bucket_mb * 2 ** 20),
                             push_nbytes=push_nbytes(worker_codec_names(job, schedule)),
                             pull_nbytes=pull_nbytes(job.exchange.pull_codec))


def ready_fractions(plan: MessagePlan, forward_fraction: float) -> list[float]:
    """Per piece, the share of a worker's step after which its gradient is complete, for a model whose
    backward pass produces gradients at an even rate from the end of the flat vector to its start
    (the simulator's and tuner's model of when pushes can start)."""
    n = max(plan.n_elements, 1)
    back = 1.0 - forward_fraction
    return [forward_fraction + back * (n - p.start) / n for p in plan.pieces]

"""lethe-bench's baseline (d): appends through the Python `eventsourcing` library (PyPI) to
PostgreSQL, with its AES cipher on.

    python eventsourcing_baseline.py --writers 64 --seconds 5 --streams 100000 --events-per-write 1
    python eventsourcing_baseline.py --check

The database comes from eventsourcing's own POSTGRES_* environment variables (lethe-bench sets
POSTGRES_DBNAME, _HOST, _PORT, _USER and _PASSWORD to a fresh database it drops afterwards).
Prints one JSON line with the figures of lethe-bench's `Figures` (ops, failures, seconds,
ops_per_sec, events_per_sec, p50_ms, p99_ms) plus `conflicts_retried`; progress and errors go
to stderr. Installed by bench/install-eventsourcing.sh.

How it writes, as a user of the library does: an `Application` (its PostgreSQL
`ApplicationRecorder`, the one with the global notification log, like Lethe's global log) and an
`Aggregate` per `bench-<n>` stream. One write is a command: get the aggregate from the
repository (a new one when it does not exist yet), trigger the write's events on it, `save()`
it - one transaction however many events. eventsourcing has no "append whatever the version"
(Lethe's `ExpectedVersion::Any`): its aggregates carry their version, so the read before the
write is how the library is used, and it is counted in the latency.
"""

import argparse
import json
import math
import random
import sys
import threading
import time
from importlib.metadata import version
from uuid import NAMESPACE_URL, UUID, uuid5

import eventsourcing.postgres  # noqa: F401  (the PostgreSQL recorder: psycopg and its pool)
from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.cryptography import AESCipher
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import RecordConflictError

# The library's AESCipher on the `cryptography` package (OpenSSL's AES-GCM, like Lethe's
# AES-256-GCM); eventsourcing.cipher:AESCipher is the same on pycryptodome.
CIPHER_TOPIC = "eventsourcing.cryptography:AESCipher"


class Orders(Aggregate):
    """A `bench-<n>` stream: the event that creates it carries its first order."""

    # `id` given by the caller (not a random uuid4) and kept out of the event's state.
    @event("FirstOrderPlaced")
    def __init__(self, id: UUID, data: dict) -> None:  # noqa: A002
        pass

    @event("OrderPlaced")
    def place(self, data: dict) -> None:
        pass


class Bench(Application[UUID]):
    pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check that the library imports")
    parser.add_argument("--writers", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--streams", type=int, default=100_000)
    parser.add_argument("--events-per-write", type=int, default=1)
    args = parser.parse_args()

    if args.check:
        print(f"eventsourcing {version('eventsourcing')}, {CIPHER_TOPIC}", file=sys.stderr)
        return 0
    if args.writers < 1 or args.seconds <= 0 or args.streams < 1 or args.events_per_write < 1:
        parser.error("--writers, --seconds, --streams and --events-per-write must be positive")

    app = Bench(
        env={
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            # One connection per writer thread: each holds at most one at a time.
            "POSTGRES_POOL_SIZE": str(args.writers),
            "POSTGRES_MAX_OVERFLOW": "0",
            "CIPHER_TOPIC": CIPHER_TOPIC,
            "CIPHER_KEY": AESCipher.create_key(32),
        }
    )

    def write(rng: random.Random) -> tuple[float, int]:
        """One command; its latency and the version conflicts it retried."""
        # The aggregate's id from its stream name, as eventsourcing's docs derive named ones.
        stream = uuid5(NAMESPACE_URL, f"bench-{rng.randrange(args.streams)}")
        orders = [order_data(rng) for _ in range(args.events_per_write)]
        started = time.perf_counter()
        conflicts = 0
        while True:
            try:
                try:
                    aggregate = app.repository.get(stream)
                    for data in orders:
                        aggregate.place(data)
                except AggregateNotFoundError:
                    aggregate = Orders(id=stream, data=orders[0])
                    for data in orders[1:]:
                        aggregate.place(data)
                app.save(aggregate)
                return time.perf_counter() - started, conflicts
            except RecordConflictError:
                # Another writer saved this aggregate since the read: retried from the read,
                # which is what appending "whatever the version" (as Lethe's do) means here.
                conflicts += 1

    latencies: list[float] = []
    retried_total = [0]
    lock = threading.Lock()
    clock = {}

    def start_clock() -> None:
        clock["start"] = time.perf_counter()
        clock["deadline"] = clock["start"] + args.seconds

    # Warm-up: every writer makes one write before the clock starts, so the round does not
    # measure Python's start, the pool's connecting or the first statements' preparing (the
    # Rust scenarios' clocks likewise start once their store is open or their server is up).
    ready = threading.Barrier(args.writers, action=start_clock)
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        try:
            rng = random.Random(seed)
            write(rng)
            ready.wait()
            mine: list[float] = []
            retried = 0
            while time.perf_counter() < clock["deadline"]:
                latency, conflicts_of_one = write(rng)
                mine.append(latency)
                retried += conflicts_of_one
            with lock:
                latencies.extend(mine)
                retried_total[0] += retried
        except BaseException as e:  # noqa: BLE001  (reported below, the run fails)
            errors.append(e)
            ready.abort()

    threads = [threading.Thread(target=writer, args=(random.getrandbits(64),)) for _ in range(args.writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    app.close()
    if errors:
        # The cause rather than the other writers' broken barrier.
        raise next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0])
    # Writes in flight at the deadline are counted, so the elapsed time includes them.
    seconds = time.perf_counter() - clock["start"]
    latencies.sort()
    ops = len(latencies)
    print(
        json.dumps(
            {
                "ops": ops,
                # Nothing fails: conflicts are retried (any other error ends the run).
                "failures": 0,
                "seconds": seconds,
                "ops_per_sec": ops / seconds,
                "events_per_sec": ops * args.events_per_write / seconds,
                "p50_ms": percentile_ms(latencies, 0.50),
                "p99_ms": percentile_ms(latencies, 0.99),
                "conflicts_retried": retried_total[0],
            }
        )
    )
    return 0


def order_data(rng: random.Random) -> dict:
    """The ~150 bytes of JSON of lethe-bench's `order_data` (workload.rs), field for field."""
    return {
        "order_id": str(UUID(int=rng.getrandbits(128), version=4)),
        "customer_id": f"c-{rng.randrange(10_000_000):07}",
        "amount_cents": rng.randrange(1_000_000),
        "currency": "EUR",
        "items": 1 + rng.randrange(9),
        "channel": "web",
    }


def percentile_ms(sorted_seconds: list[float], p: float) -> float:
    """Nearest rank, as lethe-bench's `percentile_ms` (report.rs)."""
    if not sorted_seconds:
        return 0.0
    rank = math.ceil(p * len(sorted_seconds))
    return sorted_seconds[min(max(rank, 1), len(sorted_seconds)) - 1] * 1000.0


if __name__ == "__main__":
    sys.exit(main())

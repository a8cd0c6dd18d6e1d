"""The cyclic garbage collector's young-generation threshold while an engine runs.

A request in flight keeps a chain of suspended coroutines, futures, buffers and records alive for
its whole latency. With CPython's default threshold (700 net allocations of container objects)
the collector walks those chains again and again and promotes them before they finish, and the
full collections this brings on walk the pool, the index and every request in flight. Measured
with `benchmarks/engine_throughput.py` at C=256, L=0.2 s, 1,500 tasks: 571 young, 51 middle and
5 full collections took 0.78 s of the engine's 4.4 s of CPU (18%) and freed 78 objects; the
engine makes almost no cyclic garbage. With a threshold of 50,000 the same run made one young
collection and used 12-20% less CPU per request. Garbage that is not cyclic is freed by
reference counting as before; cyclic garbage waits at most 50,000 allocations (a few MB).

The setting is process-wide (`gc.set_threshold`): the first engine to start saves the old
thresholds and the last to end restores them, so engines in threads of one process (the TUI,
tests) nest correctly.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

YOUNG_THRESHOLD = 50_000

_lock = threading.Lock()
_users = 0
_saved: tuple[int, int, int] | None = None


@contextlib.contextmanager
def engine_gc(young: int = YOUNG_THRESHOLD) -> Iterator[None]:
    """Run the block with the young-generation threshold at least `young` (allocations);
    the older generations' thresholds are kept. Restored when the last user leaves."""
    global _users, _saved
    with _lock:
        if _users == 0:
            _saved = gc.get_threshold()
            if _saved[0] and _saved[0] < young:  # 0: collection off; leave it off
                gc.set_threshold(young, *_saved[1:])
        _users += 1
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0 and _saved is not None:
                gc.set_threshold(*_saved)
                _saved = None

"""Building the records of 100,000s of frames without the cyclic garbage collector scanning them again and again."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def records_built() -> Iterator[None]:
    """Pauses the cyclic garbage collector while a block builds many long-lived records that hold no cycles
    (file lists, (file, frame) tuples, `Frame`s).

    Python starts a collection every ~700 new container objects, and the older generations' walk every
    object the process holds (torch's included): building 200,000 frames' records set off collections that
    cost as much as a third of the work itself (PERFORMANCE.md, start-up scaling). Reference counting still
    frees whatever is dropped meanwhile; a cycle made meanwhile (an exception's traceback) waits for the
    first collection after the block."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()

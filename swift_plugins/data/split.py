"""Dense scenes: a record too long for the pack length becomes pieces of the same image.

Each piece holds a consecutive run of the objects in conversation order, as many as fit, so every
object is trained and none is cut; an object too long alone is a reported error, never dropped.
"""
from __future__ import annotations

from typing import Any, Callable

from swift_plugins.data.conversation import order_objects
from swift_plugins.data.records import RecordError, show_value

__all__ = ["split_record"]

def split_record(record: dict, *, max_length: int, length_of: Callable[[dict], int],
                 object_ordering: str = "sorted", seed: int = 0, sample_key: Any = 0,
                 path: str = "<record>", line: int = 0) -> list[dict]:
    """Split a record too long for ``max_length`` into records of the same image.

    Objects are first put in conversation order (``order_objects``); each piece holds a
    consecutive run of them, greedily as many as fit: ``length_of(piece) <= max_length``. The
    returned records (also the single one when nothing is split) carry their objects in
    conversation order, so convert them with ``object_ordering="none"``; ``length_of`` must measure
    them that way too. Lengths must grow with the number of objects (they do: every object adds
    answer text). Calls to ``length_of``: 1 when the record fits, else O(pieces * log(objects))
    (galloping + binary search for each piece's end).

    An object that does not fit even alone raises ``RecordError`` (kind ``object_too_long``, field
    ``objects[i]`` with ``i`` its index as stored) naming ``path``/``line``: the caller's skip
    policy decides, nothing is cut silently.

    Example (length = 10 + 10 per object, max_length 45, ordering none)::

        5 objects -> pieces of objects [0, 1, 2], [3, 4]
    """
    objects = order_objects(record["objects"], object_ordering, seed=seed, sample_key=sample_key)

    def piece(lo: int, hi: int) -> dict:
        return {**record, "objects": objects[lo:hi]}

    whole = piece(0, len(objects))
    if length_of(whole) <= max_length:
        return [whole]
    stored_index = {id(o): i for i, o in enumerate(record["objects"])}
    pieces, start, n = [], 0, len(objects)
    while start < n:
        length = length_of(piece(start, start + 1))
        if length > max_length:
            obj = objects[start]
            raise RecordError(path, line, f"objects[{stored_index[id(obj)]}]",
                              f"object {show_value(obj['desc'])} alone makes a {length}-token sample, over "
                              f"max_length {max_length} (raise max_length or simplify/drop the object)",
                              "object_too_long")
        # Invariant: `good` objects from `start` fit, `bad` do not. n - start + 1 is a sentinel
        # ("no failure seen"); for the first piece the whole record is known not to fit.
        good, step, bad = 1, 1, (n if start == 0 else n - start + 1)
        while True:  # galloping: 2, 3, 5, 9, ... objects
            probe = min(good + step, bad - 1)
            if probe <= good:
                break
            if length_of(piece(start, start + probe)) <= max_length:
                good, step = probe, step * 2
            else:
                bad = probe
                break
        while bad - good > 1:  # binary search between the last fit and the first failure
            mid = (good + bad) // 2
            if length_of(piece(start, start + mid)) <= max_length:
                good = mid
            else:
                bad = mid
        pieces.append(piece(start, start + good))
        start += good
    return pieces

"""The per-window planners behind ``plan_packs``: sample -> pack id, from lengths alone.

Input: the lengths of one window's candidates (all in ``[1, max_length]``), the cap on samples
per pack and ``max_length``. Output: a pack id per candidate (0 .. num_packs - 1) and num_packs.

How they run fast in Python. FFD's pack *j* is exactly "scan the still-unplaced samples
from longest to shortest and take every one that fits", independent of later packs. So
``_ffd`` fills packs one at a time with a predecessor search (``bisect``) over the
*distinct* remaining lengths, taking all copies of a length that fit in one step: O(n log
n) with a Python loop over (pack, distinct length) pairs instead of over samples x packs.
BFD has no such property (where a sample goes depends on the rooms of all packs), so
``_bfd`` goes through the runs of equal lengths with the open packs filed by room: a
successor search (``bisect``) over the distinct rooms finds the best pack, and the packs of
one room take their copies in one step (see ``_bfd`` for the details and a worked
example). Each produces exactly the packs of its textbook version: ``tests/packing/test_strategies.py``
checks them against plain reference FFD and BFD, with and without the cap, and the
benchmark against its own item-by-item references.
"""
from __future__ import annotations

import bisect

import numpy as np

__all__ = ["plan_window"]


# ---- per-window planners. Input: candidate indices (ascending) and their lengths, all in
# [1, max_length]. Output: pack id per candidate (0..num_packs-1) and num_packs.


def _runs(lens: np.ndarray, C: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Samples in ``(-length, index)`` order, and that order's runs of equal lengths.

    Returns ``order`` (positions sorted by ``(-length, index)``), the distinct lengths in
    descending order and how many samples have each.
    """
    # Stable sort of the key C - len gives the (-length, index) order; a 16-bit key lets
    # numpy use its O(n) radix sort.
    key = (C - lens).astype(np.uint16 if C < 2**16 else np.int64)
    order = np.argsort(key, kind="stable")
    sl = lens[order]
    starts = np.concatenate(([0], np.flatnonzero(np.diff(sl)) + 1))
    return order, sl[starts], np.diff(np.concatenate((starts, [len(sl)])))


def _ffd(lens: np.ndarray, cap: int | None, C: int) -> tuple[np.ndarray, int]:
    """First-fit decreasing, one pack at a time (module docstring: why this is exactly FFD).

    Pack j repeatedly takes the longest remaining length ``s <= room``, as many copies as
    fit (``min(count[s], room // s, cap - taken)``). Each step is one record (pack, s, k);
    copies of a length are consumed in index order, so the records sorted by ``-s``
    (stable) line up with the samples sorted by ``(-length, index)``.
    """
    n = len(lens)
    if n == 0:
        return np.zeros(0, np.int64), 0
    order, vals_desc, counts_desc = _runs(lens, C)
    vals = vals_desc[::-1].tolist()
    cnt = dict(zip(vals, counts_desc[::-1].tolist()))
    big = n + 1 if cap is None else cap
    rec_b: list[int] = []
    rec_s: list[int] = []
    rec_k: list[int] = []
    b_app, s_app, k_app = rec_b.append, rec_s.append, rec_k.append
    find = bisect.bisect_right
    b = 0
    while vals:
        room = C
        left = big
        while True:
            i = find(vals, room) - 1
            if i < 0:
                break
            s = vals[i]
            c = cnt[s]
            k = room // s
            if k > left:
                k = left
            if k >= c:
                k = c
                del vals[i]
            else:
                cnt[s] = c - k
            b_app(b)
            s_app(s)
            k_app(k)
            room -= k * s
            left -= k
            if room == 0 or left == 0:
                break
        b += 1
    rs = np.asarray(rec_s, dtype=np.int64)
    ro = np.argsort(-rs, kind="stable")
    pack_sorted = np.repeat(np.asarray(rec_b, dtype=np.int64)[ro], np.asarray(rec_k, dtype=np.int64)[ro])
    pack_of = np.empty(n, np.int64)
    pack_of[order] = pack_sorted
    return pack_of, b


def _bfd(lens: np.ndarray, cap: int | None, C: int) -> tuple[np.ndarray, int]:
    """Best-fit decreasing, one run of equal lengths at a time, over packs filed by room.

    Textbook BFD takes the samples in ``(-length, index)`` order and puts each into the
    open pack with the least room that still fits it (ties: the lowest pack id), else into
    a new pack. Take a run of ``c`` samples of one length ``s``. The best pack P, room
    ``r``, takes copies until its room falls below ``s`` (``r // s`` copies), it reaches
    the cap, or the run ends; while P still fits it stays the best, since its room only
    shrank. The next copy goes to the next pack in ``(room, id)`` order. So a run walks the
    open packs in ascending ``(room, id)`` from the first room ``>= s``, and without a cap
    every pack of one room takes the same ``r // s`` copies: one step serves a whole room.
    Copies left when no open pack fits fill new packs, ``min(C // s, cap)`` each, the last
    one the rest. A step is one or more records (pack, k) and records come out in the
    order of the samples sorted by ``(-length, index)``: no sort is needed to assign them.

    State: ``rooms``, the distinct rooms of the open packs, ascending (the first room
    ``>= s`` is one ``bisect``), and ``at[room]``, the ids of the open packs with that
    room, ascending. Packs that change room in a run are filed again after the run: their
    new rooms are below ``s`` (except for the run's last pack, where the run ends), so the
    walk never meets them. A room below the shortest length never takes a sample and is
    not filed, nor is a pack that reached the cap. Python-level work: one bisect per run,
    one step per (run, room) visited (with a cap, per pack served) and one per run that
    opens packs; each step places at least one sample, so there are at most ``n``. Filing a
    group into a room that already holds packs is one C-level merge of two ascending lists
    (``list.sort``).

    Worked example, ``max_length=10``, lengths ``[6, 6, 6, 3, 3, 3, 3, 3]``: the run of
    6s finds no open pack, so packs 0, 1, 2 take one 6 each (``10 // 6``) and are filed as
    ``at = {4: [0, 1, 2]}``. The run of five 3s starts at room 4 and serves it in one step:
    ``4 // 3 = 1`` copy to each of packs 0, 1, 2 (room 1, below the shortest length 3, not
    filed); the two 3s left open pack 3 (room 4):

    >>> pack_of, num_packs = _bfd(np.array([6, 6, 6, 3, 3, 3, 3, 3]), None, 10)
    >>> pack_of.tolist(), num_packs       # samples 0, 3 in pack 0; 1, 4 in 1; 2, 5 in 2; 6, 7 in 3
    ([0, 1, 2, 0, 1, 2, 3, 3], 4)
    """
    n = len(lens)
    if n == 0:
        return np.zeros(0, np.int64), 0
    order, vals, counts = _runs(lens, C)
    packs = _OpenPacks(C, cap, lo=int(vals[-1]))  # a room below the shortest length never takes a sample
    for s, c in zip(vals.tolist(), counts.tolist()):
        packs.place_run(s, c)
    pack_of = np.empty(n, np.int64)
    pack_of[order] = np.repeat(np.asarray(packs.rec_b, dtype=np.int64), np.asarray(packs.rec_k, dtype=np.int64))
    return pack_of, packs.npk


class _OpenPacks:
    """``_bfd``'s state: the open packs filed by room, and the records (pack, copies) so far."""

    def __init__(self, C: int, cap: int | None, lo: int):
        self.C, self.cap, self.lo = C, cap, lo
        self.rooms: list[int] = []          # distinct rooms (>= lo) of the open packs, ascending
        self.at: dict[int, list[int]] = {}  # room -> ids of the open packs with that room, ascending
        self.size: list[int] = []           # samples per pack (kept only with a cap)
        self.rec_b: list[int] = []          # records: pack rec_b[x] takes rec_k[x] copies of the run's length
        self.rec_k: list[int] = []
        self.npk = 0

    def place_run(self, s: int, c: int) -> None:
        """Place ``c`` samples of length ``s``: walk the rooms ``>= s`` ascending, then open packs."""
        moved: list[tuple[int, list[int]]] = []  # (new room, ascending pack ids) to file after the run
        rooms, at, rec_b, rec_k = self.rooms, self.at, self.rec_b, self.rec_k
        i = j = bisect.bisect_left(rooms, s)
        while c and j < len(rooms):  # rooms[i:j] are the rooms this run emptied
            r = rooms[j]
            ids = at[r]
            m = len(ids)
            if self.cap is not None:
                c, t = self._serve_capped(r, ids, s, c, moved)
            else:  # inline (the hot loop): each pack of this room takes k copies, the last maybe fewer
                k = r // s
                t = min(m, c // k)
                if t:
                    took = ids[:t]
                    rec_b += took
                    rec_k += [k] * t
                    moved.append((r - k * s, took))
                    c -= t * k
                if c and t < m:  # 0 < c < k: the next pack takes the rest and the run ends
                    rec_b.append(ids[t])
                    rec_k.append(c)
                    moved.append((r - c * s, [ids[t]]))
                    c, t = 0, t + 1
            if t == m:
                del at[r]
                j += 1
            else:
                del ids[:t]
        if c:
            self._open(s, c, moved)
        del rooms[i:j]
        self._file(moved)

    def _serve_capped(self, r: int, ids: list[int], s: int, c: int, moved: list) -> tuple[int, int]:
        """The packs of room ``r`` one at a time, each taking copies until its room or the cap stops it;
        returns (copies left, packs served)."""
        t = 0
        while c and t < len(ids):
            p = ids[t]
            k = min(r // s, self.cap - self.size[p], c)
            self.rec_b.append(p)
            self.rec_k.append(k)
            self.size[p] += k
            c -= k
            t += 1
            if self.size[p] < self.cap:
                moved.append((r - k * s, [p]))
        return c, t

    def _open(self, s: int, c: int, moved: list) -> None:
        """No open pack fits: new packs of ``k`` copies each, the last one with the rest."""
        cap, C, npk = self.cap, self.C, self.npk
        k = C // s if cap is None else min(C // s, cap)
        q, e = divmod(c, k)
        new = list(range(npk, npk + q))
        self.rec_b += new
        self.rec_k += [k] * q
        if cap is None or k < cap:
            moved.append((C - k * s, new))
        if e:
            self.rec_b.append(npk + q)
            self.rec_k.append(e)
            moved.append((C - e * s, [npk + q]))
        if cap is not None:
            self.size += [k] * q + [e] * (e > 0)
        self.npk = npk + q + (e > 0)

    def _file(self, moved: list[tuple[int, list[int]]]) -> None:
        """File the packs whose room changed; a room below ``lo`` is not filed."""
        for r, ids in moved:
            if r >= self.lo:
                dst = self.at.get(r)
                if dst is None:
                    self.at[r] = ids
                    bisect.insort(self.rooms, r)
                else:
                    dst += ids
                    dst.sort()


def _next_fit_ordered(lens_in_order: np.ndarray, cap: int | None, C: int) -> tuple[np.ndarray, int]:
    """Next-fit over the given order: pack ids per position. One bisect per pack."""
    n = len(lens_in_order)
    if n == 0:
        return np.zeros(0, np.int64), 0
    cs = np.cumsum(lens_in_order).tolist()
    find = bisect.bisect_right
    starts = []
    p = 0
    prev = 0
    while p < n:
        e = find(cs, prev + C, p)  # first position whose cumulative sum exceeds the pack's room
        if cap is not None and e > p + cap:
            e = p + cap
        starts.append(p)
        prev = cs[e - 1]
        p = e
    sizes = np.diff(np.asarray(starts + [n], dtype=np.int64))
    return np.repeat(np.arange(len(starts), dtype=np.int64), sizes), len(starts)


def plan_window(lens: np.ndarray, strategy: str, cap: int | None, C: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, int]:
    if strategy == "ffd":
        return _ffd(lens, cap, C)
    if strategy == "bfd":
        return _bfd(lens, cap, C)
    if strategy == "next_fit":
        return _next_fit_ordered(lens, cap, C)
    if strategy == "greedy":
        order = np.argsort(-lens, kind="stable")
    else:  # random
        order = rng.permutation(len(lens))
    pid_ordered, npk = _next_fit_ordered(lens[order], cap, C)
    pack_of = np.empty(len(lens), np.int64)
    pack_of[order] = pid_ordered
    return pack_of, npk



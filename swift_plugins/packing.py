"""Packing planner: which samples go into which pack, decided from lengths alone.

Pure numpy/python (no torch, no ms-swift), deterministic, and lossless in accounting:
every input index ends up in exactly one pack or in ``dropped`` with a reason.

    >>> plan = plan_packs([7, 5, 4, 3, 1], max_length=10)
    >>> sorted(plan.packs)            # ffd, the default: 7+3, 5+4+1
    [[0, 3], [1, 2, 4]]
    >>> plan.stats([7, 5, 4, 3, 1])["efficiency"]
    1.0

Strategies (``strategy=``), on lengths ``[1, 3, 8, 6, 5]`` with ``max_length=10``:

    =========  =====================================================  ===================
    strategy   rule                                                   packs (by length)
    =========  =====================================================  ===================
    ffd        first-fit decreasing: longest first, each sample into  [8,1] [6,3] [5]
               the earliest-opened pack it fits, else a new pack
    bfd        best-fit decreasing: longest first, each sample into   [8] [6,3,1] [5]
               the pack it fits with the least room left (ties: the
               earliest opened), else a new pack
    greedy     sort by length desc, then next-fit                     [8] [6] [5,3,1]
    next_fit   data order, one open pack, flush when full             [1,3] [8] [6] [5]
    random     seeded shuffle, then next-fit                          depends on ``seed``
    =========  =====================================================  ===================

``ffd`` and ``bfd`` part at the 1: the packs then have rooms 2 (the 8's), 1 (the 6's,
after its 3) and 5 (the 5's); ffd takes the first that fits, the 8's, bfd the fullest, the
6's. "Longest first" is the order ``(-length, index)``: samples of equal length go by
index. ``max_samples_per_pack`` closes a pack when it reaches the cap, for every strategy.

Why ``"ffd"`` is the default. The two make the same number of packs on the benchmark
(``bench/bench_packing.py``, 99,388 LVIS-like lengths, docs/benchmarks.md), on or next to
the L1 bound ``ceil(sum / max_length)``; planned in windows of 256 samples they differ by
one pack either way:

    max_length               12,000   20,000   24,000
    L1 bound                 10,326    6,401    5,374
    ffd                      10,327    6,402    5,374
    bfd                      10,327    6,402    5,374
    ffd, buffer 256          10,526    6,601    5,584
    bfd, buffer 256          10,526    6,600    5,585

and the same counts again in the seeds' config (buffer 256, min_fill_ratio 0.7,
drop_last) and with buffer 1000, min_fill_ratio 0.9. A tie, so the faster one: over three
benchmark runs bfd took 0.88-1.73x ffd's time on the whole set (longer in 8 of 9) and
1.29-2.33x in every windowed configuration (bfd's Python work is per run of equal
lengths, and a window of 256 samples has almost no repeated lengths to share it). At 10M
samples (``--scale``) it turns: bfd took 0.69-1.39x ffd's time (less in 5 of 6), but this
project plans about 100k samples. Neither packs better in general: ``[12, 8, 5, 3, 2, 2]``
at ``max_length=16`` takes ffd 3 packs and bfd 2, ``[11, 6, 6, 3, 2, 2, 2]`` ffd 2 and
bfd 3 (both worked in ``tests/test_packing.py``); both have the asymptotic worst case
11/9 OPT.

How they run fast in Python. FFD's pack *j* is exactly "scan the still-unplaced samples
from longest to shortest and take every one that fits", independent of later packs. So
``_ffd`` fills packs one at a time with a predecessor search (``bisect``) over the
*distinct* remaining lengths, taking all copies of a length that fit in one step: O(n log
n) with a Python loop over (pack, distinct length) pairs instead of over samples x packs.
BFD has no such property (where a sample goes depends on the rooms of all packs), so
``_bfd`` goes through the runs of equal lengths with the open packs filed by room: a
successor search (``bisect``) over the distinct rooms finds the best pack, and the packs of
one room take their copies in one step (see ``_bfd`` for the details and a worked
example). Each produces exactly the packs of its textbook version: ``tests/test_packing.py``
checks them against plain reference FFD and BFD, with and without the cap, and the
benchmark against its own item-by-item references.

Controls
--------
* ``overlong``: ``"drop"`` reports samples with ``length > max_length`` as dropped with
  reason ``"overlong: 25011 > max_length 20000"``; ``"error"`` raises a ValueError listing
  them. ``"split"`` belongs to the data layer (split before planning) and is refused here.
* zero-length samples carry no tokens to train on and would create empty segments in a
  packed batch: they are always dropped with reason ``"empty: length 0"``.
* ``max_samples_per_pack``: no pack holds more samples than this.
* ``buffer_size``: plan independently within consecutive windows of ``buffer_size``
  samples in data order (streaming / bounded look-ahead). ``None`` = one window.
* ``min_fill_ratio`` / ``drop_last``. A pack is *underfilled* when
  ``sum(lengths) / max_length < min_fill_ratio``. After planning a window, underfilled
  packs are held back: their samples are carried into the next window and planned again
  with it (at most ``buffer_size`` samples are carried; if more, the underfilled packs
  holding the oldest samples are finalised first). An underfilled pack is *finalised*
  when no window is left (or when evicted from a full carry). Finalised underfilled
  packs are kept when ``drop_last=False`` and dropped, samples reported, when
  ``drop_last=True``. So with ``drop_last=True`` every pack in the plan has
  ``fill >= min_fill_ratio`` and ``dropped`` holds exactly the samples of the packs that
  did not get there. With ``min_fill_ratio == 0`` no pack is underfilled, nothing is held
  back and ``drop_last`` drops nothing.

  Worked example: ``lengths=[9, 8, 3]``, ``max_length=10``, ``min_fill_ratio=0.5``,
  ``drop_last=True``, no buffer. ffd packs ``[9]`` (0.9), ``[8]`` (0.8), ``[3]`` (0.3).
  ``[3]`` is underfilled and no samples are left to fill it, so it is dropped:
  ``packs=[[0], [1]]``, ``dropped=[2]``, ``drop_reasons={2: "drop_last: underfilled pack
  (fill 0.3000 < min_fill_ratio 0.5)"}``. With ``buffer_size=2`` the first window
  ``[9, 8]`` gives ``[9]``, ``[8]``, both kept; the last window ``[3]`` gives the same drop.

After planning, the order of packs is shuffled with ``numpy.random.default_rng`` seeded
from ``seed`` (sorted strategies would otherwise feed all long packs first), and indices
inside a pack are ascending. Same inputs and seed give the same plan; there are no
threads, hash- or dict-order dependencies (numpy's Generator streams are stable for a
given numpy version).

Data-parallel balance: see :func:`deal_packs`.
"""
from __future__ import annotations

import bisect
import json
import math
import numbers
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

__all__ = [
    "STRATEGIES",
    "DEFAULT_STRATEGY",
    "OVERLONG_CHOICES",
    "DEFAULT_COST_C",
    "PackPlan",
    "plan_packs",
    "Deal",
    "deal_packs",
    "pack_costs",
    "step_costs",
]

STRATEGIES = ("ffd", "bfd", "greedy", "next_fit", "random")
DEFAULT_STRATEGY = "ffd"  # same packs as bfd on the benchmark, and faster there (module docstring)
OVERLONG_CHOICES = ("drop", "error")
_PLAN_FORMAT = "swiftpack.pack_plan"
_PLAN_VERSION = 1

# ----------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class PackPlan:
    """Result of :func:`plan_packs`.

    packs: pack -> sample indices (ascending inside a pack; pack order is the shuffled
        training order). dropped: sorted indices that are in no pack. drop_reasons:
        index -> short stable reason; the text before the first ``":"`` is its kind
        (``overlong``, ``empty``, ``drop_last``). options: the other planning arguments,
        kept so a saved plan says how it was made.
    """

    packs: list[list[int]]
    dropped: list[int]
    drop_reasons: dict[int, str]
    max_length: int
    strategy: str
    num_samples: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def num_packs(self) -> int:
        return len(self.packs)

    def _check_lengths(self, lengths) -> np.ndarray:
        lens = np.asarray(lengths)
        if lens.ndim != 1 or len(lens) != self.num_samples:
            raise ValueError(
                f"lengths has {len(lens) if lens.ndim == 1 else lens.shape} entries but this plan was made "
                f"for {self.num_samples} samples; pass the same lengths given to plan_packs")
        return lens.astype(np.int64, copy=False)

    def pack_lengths(self, lengths) -> list[int]:
        """Tokens per pack, in pack order: ``[sum(lengths[i] for i in p) for p in packs]``."""
        lens = self._check_lengths(lengths)
        if not self.packs:
            return []
        flat = np.fromiter((i for p in self.packs for i in p), dtype=np.int64)
        starts = np.cumsum([0] + [len(p) for p in self.packs[:-1]])
        return np.add.reduceat(lens[flat], starts).tolist()

    def stats(self, lengths) -> dict[str, Any]:
        """Plain-dict summary. ``efficiency`` = packed tokens / (num_packs * max_length);
        ``l1_bound`` = ceil(packed tokens / max_length), the fewest packs possible."""
        lens = self._check_lengths(lengths)
        pl = np.asarray(self.pack_lengths(lens), dtype=np.int64)
        packed_tokens = int(pl.sum())
        num_packed = sum(len(p) for p in self.packs)
        fills = pl / self.max_length if len(pl) else np.zeros(0)
        efficiency = packed_tokens / (self.num_packs * self.max_length) if self.num_packs else 0.0
        by_kind: dict[str, int] = {}
        for i in self.dropped:
            kind = self.drop_reasons[i].split(":", 1)[0]
            by_kind[kind] = by_kind.get(kind, 0) + 1
        return {
            "num_samples": self.num_samples,
            "num_packed": num_packed,
            "num_packs": self.num_packs,
            "avg_samples_per_pack": num_packed / self.num_packs if self.num_packs else 0.0,
            "packed_tokens": packed_tokens,
            "efficiency": efficiency,
            "l1_bound": -(-packed_tokens // self.max_length),
            "samples_dropped": len(self.dropped),
            "tokens_dropped": int(lens[np.asarray(self.dropped, dtype=np.int64)].sum()) if self.dropped else 0,
            "min_fill": float(fills.min()) if len(fills) else 0.0,
            "mean_fill": efficiency,  # mean of per-pack fills, computed exactly
            "max_fill": float(fills.max()) if len(fills) else 0.0,
            "dropped_by_reason": dict(sorted(by_kind.items())),
            "max_length": self.max_length,
            "strategy": self.strategy,
        }

    # -- persistence: plain lists, so a plan can live in a training output dir
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": _PLAN_FORMAT,
            "version": _PLAN_VERSION,
            "max_length": self.max_length,
            "strategy": self.strategy,
            "num_samples": self.num_samples,
            "options": dict(self.options),
            "packs": [list(p) for p in self.packs],
            "dropped": list(self.dropped),
            "drop_reasons": [[i, self.drop_reasons[i]] for i in sorted(self.drop_reasons)],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PackPlan":
        if d.get("format") != _PLAN_FORMAT or d.get("version") != _PLAN_VERSION:
            raise ValueError(
                f"not a pack plan: expected format {_PLAN_FORMAT!r} version {_PLAN_VERSION}, got "
                f"format {d.get('format')!r} version {d.get('version')!r}")
        return cls(
            packs=[[int(i) for i in p] for p in d["packs"]],
            dropped=[int(i) for i in d["dropped"]],
            drop_reasons={int(i): str(r) for i, r in d["drop_reasons"]},
            max_length=int(d["max_length"]),
            strategy=str(d["strategy"]),
            num_samples=int(d["num_samples"]),
            options=dict(d.get("options", {})),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "PackPlan":
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike) -> None:
        """Write ``to_json()`` atomically (temp file in the same dir, then rename)."""
        path = os.fspath(path)
        fd, tmp = tempfile.mkstemp(prefix=".tmp_plan_", dir=os.path.dirname(os.path.abspath(path)))
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.to_json())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PackPlan":
        with open(path, encoding="utf-8") as f:
            return cls.from_json(f.read())


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))


def _validate(lengths, max_length, strategy, seed, buffer_size, min_fill_ratio, drop_last, overlong,
              max_samples_per_pack) -> np.ndarray:
    """Check every argument, raise one ValueError naming all problems; return int64 lengths."""
    errors: list[str] = []
    lens = None
    try:
        arr = np.asarray(lengths)
    except Exception as e:  # ragged nested lists etc.
        arr = None
        errors.append(f"lengths must be a 1-D sequence of non-negative integers ({e})")
    if arr is not None:
        if arr.ndim != 1:
            errors.append(f"lengths must be 1-D, got shape {arr.shape}")
        elif arr.size and arr.dtype == object and all(_is_int(x) for x in arr.tolist()):
            arr = arr.astype(np.int64)
        if arr.ndim == 1 and arr.size and (arr.dtype.kind not in "iu"):
            errors.append(f"lengths must be integers (token counts), got dtype {arr.dtype}")
        elif arr.ndim == 1:
            arr = arr.astype(np.int64)
            neg = np.flatnonzero(arr < 0)
            if len(neg):
                shown = ", ".join(f"index {i} ({arr[i]})" for i in neg[:5].tolist())
                more = f" and {len(neg) - 5} more" if len(neg) > 5 else ""
                errors.append(f"lengths must be non-negative: {shown}{more}")
            else:
                lens = arr
    if not _is_int(max_length) or max_length <= 0:
        errors.append(f"max_length must be a positive integer, got {max_length!r}")
    if strategy not in STRATEGIES:
        errors.append(f"strategy must be one of {', '.join(map(repr, STRATEGIES))}, got {strategy!r}")
    if not _is_int(seed) or seed < 0:
        errors.append(f"seed must be a non-negative integer, got {seed!r}")
    if buffer_size is not None and (not _is_int(buffer_size) or buffer_size < 1):
        errors.append(f"buffer_size must be None (whole dataset) or an integer >= 1, got {buffer_size!r}")
    if (not isinstance(min_fill_ratio, numbers.Real) or isinstance(min_fill_ratio, (bool, np.bool_))
            or not 0.0 <= min_fill_ratio <= 1.0):
        errors.append(f"min_fill_ratio must be a number in [0, 1], got {min_fill_ratio!r}")
    if not isinstance(drop_last, (bool, np.bool_)):
        errors.append(f"drop_last must be True or False, got {drop_last!r}")
    if overlong == "split":
        errors.append("overlong='split' is handled by the data layer before planning: split overlong samples "
                      "there and pass the split lengths; plan_packs accepts overlong='drop' or 'error'")
    elif overlong not in OVERLONG_CHOICES:
        errors.append(f"overlong must be one of 'drop', 'error' ('split' is done by the data layer), "
                      f"got {overlong!r}")
    if max_samples_per_pack is not None and (not _is_int(max_samples_per_pack) or max_samples_per_pack < 1):
        errors.append(f"max_samples_per_pack must be None (no cap) or an integer >= 1, got {max_samples_per_pack!r}")
    if errors:
        raise ValueError("plan_packs: " + "; ".join(errors))
    return lens


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

    >>> sorted(plan_packs([6, 6, 6, 3, 3, 3, 3, 3], 10, strategy="bfd").packs)
    [[0, 3], [1, 4], [2, 5], [6, 7]]
    """
    n = len(lens)
    if n == 0:
        return np.zeros(0, np.int64), 0
    order, vals, counts = _runs(lens, C)
    lo = int(vals[-1])              # a room below the shortest length never takes a sample
    rooms: list[int] = []           # distinct rooms (>= lo) of the open packs, ascending
    at: dict[int, list[int]] = {}   # room -> ids of the open packs with that room, ascending
    size: list[int] = []            # samples per pack (kept only with a cap)
    rec_b: list[int] = []           # records: pack rec_b[x] takes rec_k[x] copies of the run's length
    rec_k: list[int] = []
    npk = 0
    find, insort, filed = bisect.bisect_left, bisect.insort, at.get
    for s, c in zip(vals.tolist(), counts.tolist()):
        moved: list[tuple[int, list[int]]] = []  # (new room, ascending pack ids) to file after the run
        i = j = find(rooms, s)
        while c and j < len(rooms):  # rooms[i:j] are the rooms this run emptied
            r = rooms[j]
            ids = at[r]
            m = len(ids)
            if cap is None:
                k = r // s
                t = min(m, c // k)  # packs of this room taking k copies each
                if t:
                    took = ids[:t]
                    rec_b += took
                    rec_k += [k] * t
                    moved.append((r - k * s, took))
                    c -= t * k
                if c and t < m:  # 0 < c < k: the next pack takes the rest and the run ends
                    p = ids[t]
                    rec_b.append(p)
                    rec_k.append(c)
                    moved.append((r - c * s, [p]))
                    c = 0
                    t += 1
            else:
                t = 0
                while c and t < m:
                    p = ids[t]
                    k = min(r // s, cap - size[p], c)
                    rec_b.append(p)
                    rec_k.append(k)
                    size[p] += k
                    c -= k
                    t += 1
                    if size[p] < cap:
                        moved.append((r - k * s, [p]))
            if t == m:
                del at[r]
                j += 1
            else:
                del ids[:t]
        if c:  # no open pack fits: new packs of k copies, the last one with the rest
            k = C // s if cap is None else min(C // s, cap)
            q, e = divmod(c, k)
            new = list(range(npk, npk + q))
            rec_b += new
            rec_k += [k] * q
            if cap is None or k < cap:
                moved.append((C - k * s, new))
            if e:
                rec_b.append(npk + q)
                rec_k.append(e)
                moved.append((C - e * s, [npk + q]))
            if cap is not None:
                size += [k] * q + [e] * (e > 0)
            npk += q + (e > 0)
        del rooms[i:j]
        for r, ids in moved:
            if r >= lo:
                dst = filed(r)
                if dst is None:
                    at[r] = ids
                    insort(rooms, r)
                else:
                    dst += ids
                    dst.sort()
    pack_of = np.empty(n, np.int64)
    pack_of[order] = np.repeat(np.asarray(rec_b, dtype=np.int64), np.asarray(rec_k, dtype=np.int64))
    return pack_of, npk


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


def _plan_window(lens: np.ndarray, strategy: str, cap: int | None, C: int,
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


def _group(cand: np.ndarray, pack_of: np.ndarray, npk: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat candidate indices grouped by pack (ascending inside; cand is ascending) + pack offsets."""
    order = np.argsort(pack_of, kind="stable")
    counts = np.bincount(pack_of, minlength=npk)
    offsets = np.concatenate(([0], np.cumsum(counts)))
    return cand[order], offsets


def _underfill_reason(tokens: int, C: int, ratio: float) -> str:
    fill = math.floor(tokens / C * 10_000) / 10_000  # truncate so the printed fill stays < ratio
    return f"drop_last: underfilled pack (fill {fill:.4f} < min_fill_ratio {ratio:g})"


def plan_packs(lengths: Sequence[int] | np.ndarray, max_length: int, *, strategy: str = DEFAULT_STRATEGY, seed: int = 0,
               buffer_size: int | None = None, min_fill_ratio: float = 0.0, drop_last: bool = False,
               overlong: str = "drop", max_samples_per_pack: int | None = None) -> PackPlan:
    """Plan packs of sample indices whose lengths sum to at most ``max_length``.

    See the module docstring for strategies, controls and worked examples.

    Raises ValueError (all problems at once) for invalid arguments, and for samples longer
    than ``max_length`` when ``overlong="error"``.
    """
    lens = _validate(lengths, max_length, strategy, seed, buffer_size, min_fill_ratio, drop_last, overlong,
                     max_samples_per_pack)
    C = int(max_length)
    n = len(lens)
    ratio = float(min_fill_ratio)
    cap = None if max_samples_per_pack is None else int(max_samples_per_pack)
    over = np.flatnonzero(lens > C)
    if overlong == "error" and len(over):
        shown = ", ".join(f"index {i} ({lens[i]} tokens)" for i in over[:10].tolist())
        more = f" and {len(over) - 10} more" if len(over) > 10 else ""
        raise ValueError(
            f"{len(over)} sample(s) longer than max_length {C}: {shown}{more}. Raise max_length, or use "
            f"overlong='split' in the data layer (or overlong='drop' to drop and report them)")
    reasons: dict[int, str] = {}
    for i in over.tolist():
        reasons[i] = f"overlong: {int(lens[i])} > max_length {C}"
    for i in np.flatnonzero(lens == 0).tolist():
        reasons[i] = "empty: length 0"
    valid = (lens > 0) & (lens <= C)

    plan_rng, shuffle_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    # At most `window` samples are carried, so one window plans at most 2 * buffer_size samples.
    window = n if buffer_size is None else int(buffer_size)
    flat_parts: list[np.ndarray] = []    # finalised packs, as flat index arrays + sizes
    size_parts: list[np.ndarray] = []
    under_packs: list[np.ndarray] = []   # finalised underfilled packs
    carry = np.zeros(0, np.int64)
    starts = range(0, n, window) if n else [0]
    for a in starts:
        b = min(a + window, n)
        new = np.arange(a, b, dtype=np.int64)[valid[a:b]]
        cand = np.concatenate((carry, new)) if len(carry) else new
        if len(cand) == 0:
            continue
        pack_of, npk = _plan_window(lens[cand], strategy, cap, C, plan_rng)
        flat, offsets = _group(cand, pack_of, npk)
        sizes = np.diff(offsets)
        if ratio > 0.0:
            tokens = np.add.reduceat(lens[flat], offsets[:-1])
            under = tokens / C < ratio
        else:
            under = np.zeros(npk, bool)
        if not under.any():
            flat_parts.append(flat)
            size_parts.append(sizes)
            carry = np.zeros(0, np.int64)
            continue
        keep_mask = np.repeat(~under, sizes)
        flat_parts.append(flat[keep_mask])
        size_parts.append(sizes[~under])
        ui = np.flatnonzero(under)
        u_packs = [flat[offsets[j]:offsets[j + 1]] for j in ui.tolist()]
        if b >= n:
            under_packs.extend(u_packs)
            carry = np.zeros(0, np.int64)
            continue
        # hold back, oldest (smallest first index) evicted first while over the carry limit
        u_packs.sort(key=lambda p: int(p[0]))
        total = sum(len(p) for p in u_packs)
        j = 0
        while total > window:
            total -= len(u_packs[j])
            j += 1
        under_packs.extend(u_packs[:j])
        rest = u_packs[j:]
        carry = np.sort(np.concatenate(rest)) if rest else np.zeros(0, np.int64)

    flat_all = np.concatenate(flat_parts).tolist() if flat_parts else []
    size_all = np.concatenate(size_parts).tolist() if size_parts else []
    packs: list[list[int]] = []
    pos = 0
    for s in size_all:
        packs.append(flat_all[pos:pos + s])
        pos += s
    for p in under_packs:
        if drop_last:
            r = _underfill_reason(int(lens[p].sum()), C, ratio)
            for i in p.tolist():
                reasons[i] = r
        else:
            packs.append(p.tolist())
    perm = shuffle_rng.permutation(len(packs)).tolist()
    packs = [packs[k] for k in perm]
    dropped = sorted(reasons)
    return PackPlan(
        packs=packs,
        dropped=dropped,
        drop_reasons={i: reasons[i] for i in dropped},
        max_length=C,
        strategy=strategy,
        num_samples=n,
        options={"seed": int(seed), "buffer_size": None if buffer_size is None else window, "min_fill_ratio": ratio,
                 "drop_last": bool(drop_last), "overlong": overlong, "max_samples_per_pack": cap},
    )


# ----------------------------------------------------------------------------- deal

# cost(pack) = sum(len) + sum(len^2) / DEFAULT_COST_C, in "token-equivalents".
# Per token, the linear layers of Qwen3-VL-8B's LLM (d=4096, 32 q / 8 kv heads of 128,
# SwiGLU 12288) cost 2 * 193M = 386 MFLOP; causal attention costs 2 * 2 * 4096 FLOP per
# (query, key) pair, L^2 / 2 pairs per sample: 8192 * L^2. The two are equal at
# L = 386e6 / 8192 ~= 47k tokens, hence C = 48,000: a 20k-token sample costs 1.42x a
# packed run of short samples of the same total length. Packed samples are isolated, so
# attention is per sample (block diagonal): sum of len^2, not (sum of len)^2.
DEFAULT_COST_C = 48_000.0


def _packs_of(plan_or_packs) -> list[list[int]]:
    return plan_or_packs.packs if isinstance(plan_or_packs, PackPlan) else plan_or_packs


def pack_costs(plan_or_packs, lengths, *, cost_c: float = DEFAULT_COST_C) -> np.ndarray:
    """cost per pack = sum(len) + sum(len^2) / cost_c (float64 array in pack order)."""
    packs = _packs_of(plan_or_packs)
    lens = np.asarray(lengths, dtype=np.float64)
    if not packs:
        return np.zeros(0)
    flat = np.fromiter((i for p in packs for i in p), dtype=np.int64)
    starts = np.cumsum([0] + [len(p) for p in packs[:-1]])
    l = lens[flat]
    return np.add.reduceat(l, starts) + np.add.reduceat(l * l, starts) / cost_c


@dataclass(frozen=True)
class Deal:
    """Packs dealt to data-parallel ranks.

    ranks[r][k] is the position (into ``packs``) of the k-th pack rank r runs; step s of
    rank r is ``ranks[r][s*b:(s+1)*b]`` with b = per_device_batch_size. All ranks get the
    same number of packs. leftover: positions of the packs of the last, incomplete step
    (``num_packs % (world_size * b)`` of them), for the caller to report or run padded.
    """

    ranks: list[list[int]]
    leftover: list[int]
    world_size: int
    per_device_batch_size: int

    @property
    def num_steps(self) -> int:
        return len(self.ranks[0]) // self.per_device_batch_size if self.ranks else 0

    def global_order(self) -> list[int]:
        """Flat pack order such that ``order[r::world_size]`` is ``ranks[r]``: what a
        ``DistributedSampler(shuffle=False)`` hands each rank."""
        out: list[int] = []
        for k in range(len(self.ranks[0])):
            out.extend(self.ranks[r][k] for r in range(self.world_size))
        return out


def deal_packs(plan_or_packs, lengths, world_size: int, *, per_device_batch_size: int = 1, seed: int = 0,
               window_steps: int = 8, balance: bool = True, cost_c: float = DEFAULT_COST_C) -> Deal:
    """Deal packs to ranks so that packs running in the same step cost about the same.

    g = world_size * per_device_batch_size packs run per step. The plan's (shuffled) order
    is cut into steps of g; the last ``num_packs % g`` packs go to ``leftover``.

    balance=False (naive, a DistributedSampler over the plan order): pack p -> rank
    p % world_size.

    balance=True: within each window of ``window_steps`` consecutive steps, packs are
    sorted by cost (desc, ties by position) and cut into steps of g, so a step holds
    packs of similar cost; the steps of the window are shuffled (seeded); inside a step
    packs go to ranks longest-processing-time first (the rank with the least cost so far
    that still has a free slot, ties -> lowest rank). A pack moves at most
    ``window_steps`` steps from its planned place. Example, world_size=2, costs in plan
    order [9, 1, 8, 2]: naive steps (9,1) (8,2) -> per-step max 9+8=17 for mean 5+5=10
    (imbalance 1.7); balanced (window 2): (9,8) (2,1) -> max 9+2=11 (imbalance 1.1).

    Measured (bench/bench_packing.py, LVIS-like, max_length 20000, world_size 4): imbalance
    naive 1.0639, window_steps 4 / 8 / 32: 1.0244 / 1.0139 / 1.0045; the default 8 removes
    ~80% of the waiting while keeping packs within 8 steps of their shuffled place.
    "Step" is one micro-batch: the unit at which ranks synchronise under ZeRO or plain DDP
    without ``no_sync``; with gradient accumulation under ``no_sync`` ranks only wait at the
    optimizer step, and balancing micro-steps balances those sums too.
    """
    errors = []
    if not _is_int(world_size) or world_size < 1:
        errors.append(f"world_size must be an integer >= 1, got {world_size!r}")
    if not _is_int(per_device_batch_size) or per_device_batch_size < 1:
        errors.append(f"per_device_batch_size must be an integer >= 1, got {per_device_batch_size!r}")
    if not _is_int(window_steps) or window_steps < 1:
        errors.append(f"window_steps must be an integer >= 1, got {window_steps!r}")
    if not _is_int(seed) or seed < 0:
        errors.append(f"seed must be a non-negative integer, got {seed!r}")
    if errors:
        raise ValueError("deal_packs: " + "; ".join(errors))
    packs = _packs_of(plan_or_packs)
    W, bs = int(world_size), int(per_device_batch_size)
    g = W * bs
    P = len(packs)
    n_full = (P // g) * g
    leftover = list(range(n_full, P))
    ranks: list[list[int]] = [[] for _ in range(W)]
    if not balance:
        for p in range(n_full):
            ranks[p % W].append(p)
        return Deal(ranks, leftover, W, bs)
    costs = pack_costs(packs, lengths, cost_c=cost_c)
    rng = np.random.default_rng(seed)
    steps = n_full // g
    for w0 in range(0, steps, window_steps):
        w1 = min(w0 + window_steps, steps)
        pos = np.arange(w0 * g, w1 * g)
        srt = pos[np.argsort(-costs[pos], kind="stable")]
        groups = [srt[k * g:(k + 1) * g] for k in range(w1 - w0)]
        for k in rng.permutation(len(groups)).tolist():
            load = [0.0] * W
            slots = [0] * W
            for p in groups[k].tolist():  # already cost-descending: LPT
                r = min((r for r in range(W) if slots[r] < bs), key=lambda r: (load[r], r))
                load[r] += costs[p]
                slots[r] += 1
                ranks[r].append(p)
    return Deal(ranks, leftover, W, bs)


def step_costs(deal: Deal, plan_or_packs, lengths, *, cost_c: float = DEFAULT_COST_C) -> dict[str, Any]:
    """Per-step cost of a deal: a step lasts as long as its slowest rank.

    Returns ``step_max``/``step_mean`` (per step, over ranks, of the rank's summed pack
    costs), their totals, and ``imbalance = total_max / total_mean`` (1.0 = no rank waits).
    """
    costs = pack_costs(plan_or_packs, lengths, cost_c=cost_c)
    bs = deal.per_device_batch_size
    S = deal.num_steps
    per_rank = np.array([[costs[r[s * bs:(s + 1) * bs]].sum() for s in range(S)] for r in deal.ranks]) \
        if S else np.zeros((deal.world_size, 0))
    step_max = per_rank.max(axis=0) if S else np.zeros(0)
    step_mean = per_rank.mean(axis=0) if S else np.zeros(0)
    total_max, total_mean = float(step_max.sum()), float(step_mean.sum())
    return {
        "num_steps": S,
        "step_max": step_max.tolist(),
        "step_mean": step_mean.tolist(),
        "total_max": total_max,
        "total_mean": total_mean,
        "imbalance": total_max / total_mean if total_mean else 1.0,
    }

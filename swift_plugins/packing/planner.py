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

Why ``"ffd"`` is the default: on the planner benchmark (99,388 LVIS-like lengths at 12k, 20k
and 24k, with and without windows) ffd and bfd make the same number of packs, on or one pack
over the L1 bound ``ceil(sum / max_length)``, and ffd plans faster at this project's scale
(about 100k samples); the measured counts and times are in docs/benchmarks.md, "ffd against
bfd, and the default". Neither packs better in general: ``[12, 8, 5, 3, 2, 2]`` at
``max_length=16`` takes ffd 3 packs and bfd 2, ``[11, 6, 6, 3, 2, 2, 2]`` ffd 2 and bfd 3 (both
worked in ``tests/packing/test_strategies.py``); both have the asymptotic worst case 11/9 OPT.

How ``ffd`` and ``bfd`` run fast in Python: :mod:`swift_plugins.packing.strategies`.

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

Data-parallel balance: see :func:`swift_plugins.packing.deal.deal_packs`.
"""
from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from swift_plugins.files import atomic_write_text
from swift_plugins.packing.strategies import plan_window

__all__ = ["DEFAULT_STRATEGY", "OVERLONG_CHOICES", "STRATEGIES", "PackPlan", "is_integer", "plan_packs"]

STRATEGIES = ("ffd", "bfd", "greedy", "next_fit", "random")
DEFAULT_STRATEGY = "ffd"  # same packs as bfd on the benchmark, and faster there (module docstring)
# What happens to a sample longer than max_length: drop (reported), error, split (the data layer
# cuts a dense record into pieces that fit before planning; plan_packs itself refuses it).
OVERLONG_CHOICES = ("drop", "error", "split")
_PLAN_FORMAT = "swiftpack.pack_plan"
_PLAN_VERSION = 2  # 2: 'bfd' is best-fit (in version 1 it named first-fit, now 'ffd')

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
        """Write ``to_json()`` atomically (``swift_plugins.files.atomic_write_text``)."""
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PackPlan":
        with open(path, encoding="utf-8") as f:
            return cls.from_json(f.read())


def is_integer(x) -> bool:
    """An int or numpy integer, not a bool."""
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
        elif arr.size and arr.dtype == object and all(is_integer(x) for x in arr.tolist()):
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
    if not is_integer(max_length) or max_length <= 0:
        errors.append(f"max_length must be a positive integer, got {max_length!r}")
    if strategy not in STRATEGIES:
        errors.append(f"strategy must be one of {', '.join(map(repr, STRATEGIES))}, got {strategy!r}")
    if not is_integer(seed) or seed < 0:
        errors.append(f"seed must be a non-negative integer, got {seed!r}")
    if buffer_size is not None and (not is_integer(buffer_size) or buffer_size < 1):
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
    if max_samples_per_pack is not None and (not is_integer(max_samples_per_pack) or max_samples_per_pack < 1):
        errors.append(f"max_samples_per_pack must be None (no cap) or an integer >= 1, got {max_samples_per_pack!r}")
    if errors:
        raise ValueError("plan_packs: " + "; ".join(errors))
    return lens


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

    See the module docstring for strategies, controls and worked examples. Steps: validate,
    decide what cannot be packed (:func:`_unpackable`), plan window by window carrying
    underfilled packs (:func:`_plan_windows`), then keep or drop the underfilled packs left and
    shuffle the pack order (:func:`_assemble`).

    Raises ValueError (all problems at once) for invalid arguments, and for samples longer
    than ``max_length`` when ``overlong="error"``.
    """
    lens = _validate(lengths, max_length, strategy, seed, buffer_size, min_fill_ratio, drop_last, overlong,
                     max_samples_per_pack)
    C = int(max_length)
    ratio = float(min_fill_ratio)
    cap = None if max_samples_per_pack is None else int(max_samples_per_pack)
    reasons = _unpackable(lens, C, overlong)
    plan_rng, shuffle_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    window = len(lens) if buffer_size is None else int(buffer_size)
    valid = (lens > 0) & (lens <= C)
    packs, under_packs = _plan_windows(lens, valid, window, C, ratio, lambda L: plan_window(L, strategy, cap, C,
                                                                                            plan_rng))
    packs = _assemble(packs, under_packs, lens, C, ratio, drop_last, reasons, shuffle_rng)
    dropped = sorted(reasons)
    return PackPlan(
        packs=packs,
        dropped=dropped,
        drop_reasons={i: reasons[i] for i in dropped},
        max_length=C,
        strategy=strategy,
        num_samples=len(lens),
        options={"seed": int(seed), "buffer_size": None if buffer_size is None else window, "min_fill_ratio": ratio,
                 "drop_last": bool(drop_last), "overlong": overlong, "max_samples_per_pack": cap},
    )


def _unpackable(lens: np.ndarray, C: int, overlong: str) -> dict[int, str]:
    """index -> reason for the samples no pack can hold: longer than ``C`` or empty.

    >>> _unpackable(np.array([3, 12, 0]), 10, "drop")
    {1: 'overlong: 12 > max_length 10', 2: 'empty: length 0'}
    """
    over = np.flatnonzero(lens > C)
    if overlong == "error" and len(over):
        shown = ", ".join(f"index {i} ({lens[i]} tokens)" for i in over[:10].tolist())
        more = f" and {len(over) - 10} more" if len(over) > 10 else ""
        raise ValueError(
            f"{len(over)} sample(s) longer than max_length {C}: {shown}{more}. Raise max_length, or use "
            f"overlong='split' in the data layer (or overlong='drop' to drop and report them)")
    reasons = {i: f"overlong: {int(lens[i])} > max_length {C}" for i in over.tolist()}
    reasons.update({i: "empty: length 0" for i in np.flatnonzero(lens == 0).tolist()})
    return reasons


def _plan_windows(lens: np.ndarray, valid: np.ndarray, window: int, C: int, ratio: float,
                  plan: Callable[[np.ndarray], tuple[np.ndarray, int]]) -> tuple[list[list[int]], list[np.ndarray]]:
    """Plan consecutive windows of ``window`` samples (plus the carry); return the packs kept
    (index lists, in planning order) and the underfilled packs finalised (index arrays).

    ``plan(lengths) -> (pack_of, num_packs)`` is the strategy. An underfilled pack
    (``tokens / C < ratio``) is carried into the next window; at most ``window`` samples are
    carried (so a window plans at most ``2 * window`` samples), the oldest evicted first.
    """
    n = len(lens)
    flat_parts: list[np.ndarray] = []  # kept packs as flat index arrays + sizes: one list split at the end
    size_parts: list[np.ndarray] = []
    under_packs: list[np.ndarray] = []
    carry = np.zeros(0, np.int64)
    for a in (range(0, n, window) if n else []):
        b = min(a + window, n)
        new = np.arange(a, b, dtype=np.int64)[valid[a:b]]
        cand = np.concatenate((carry, new)) if len(carry) else new
        carry = np.zeros(0, np.int64)
        if len(cand) == 0:
            continue
        pack_of, npk = plan(lens[cand])
        flat, offsets = _group(cand, pack_of, npk)
        tokens = np.add.reduceat(lens[flat], offsets[:-1])
        under = tokens / C < ratio if ratio > 0.0 else np.zeros(npk, bool)
        sizes = np.diff(offsets)
        flat_parts.append(flat[np.repeat(~under, sizes)])
        size_parts.append(sizes[~under])
        u_packs = [flat[offsets[j]:offsets[j + 1]] for j in np.flatnonzero(under).tolist()]
        if b >= n:
            under_packs.extend(u_packs)
        elif u_packs:
            evicted, carry = _carry(u_packs, window)
            under_packs.extend(evicted)
    flat_all = np.concatenate(flat_parts).tolist() if flat_parts else []
    bounds = np.cumsum([0] + (np.concatenate(size_parts).tolist() if size_parts else [])).tolist()
    return [flat_all[s:e] for s, e in zip(bounds[:-1], bounds[1:])], under_packs


def _carry(u_packs: list[np.ndarray], limit: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Split underfilled packs into (finalised, carried samples): the packs holding the oldest
    samples are finalised while more than ``limit`` samples would be carried.

    >>> ev, carry = _carry([np.array([5, 6]), np.array([1, 2, 3])], 2)
    >>> [p.tolist() for p in ev], carry.tolist()
    ([[1, 2, 3]], [5, 6])
    """
    u_packs = sorted(u_packs, key=lambda p: int(p[0]))
    total = sum(len(p) for p in u_packs)
    j = 0
    while total > limit:
        total -= len(u_packs[j])
        j += 1
    rest = u_packs[j:]
    return u_packs[:j], (np.sort(np.concatenate(rest)) if rest else np.zeros(0, np.int64))


def _assemble(kept: list[list[int]], under_packs: list[np.ndarray], lens: np.ndarray, C: int, ratio: float,
              drop_last: bool, reasons: dict[int, str], shuffle_rng: np.random.Generator) -> list[list[int]]:
    """The final pack list: kept packs, then the underfilled ones unless ``drop_last`` (their
    samples then get a ``drop_last`` reason in ``reasons``), in a seeded shuffled order."""
    packs = list(kept)
    for p in under_packs:
        if drop_last:
            r = _underfill_reason(int(lens[p].sum()), C, ratio)
            reasons.update({i: r for i in p.tolist()})
        else:
            packs.append(p.tolist())
    perm = shuffle_rng.permutation(len(packs)).tolist()
    return [packs[k] for k in perm]

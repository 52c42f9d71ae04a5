"""Packs dealt to data-parallel ranks so that the packs of one step cost about the same.

A step lasts as long as its slowest rank. Packs differ in cost (attention grows with each
sample's squared length), so dealing them in plan order makes ranks wait::

    costs in plan order [9, 1, 8, 2], 2 ranks
    naive    (p % ranks):       step 1 = (9, 1), step 2 = (8, 2)  -> max 9 + 8 = 17 for mean 10: 1.7
    balanced (sort in window):  step 1 = (9, 8), step 2 = (2, 1)  -> max 9 + 2 = 11 for mean 10: 1.1

Pure numpy. See :func:`deal_packs` for the rule (measured imbalance: docs/benchmarks.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from swift_plugins.packing.planner import PackPlan, is_integer

__all__ = ["DEFAULT_COST_C", "Deal", "deal_packs", "pack_costs", "step_costs"]

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

    The default window of 8 steps keeps packs within 8 steps of their shuffled place; the
    imbalance it leaves against the naive deal and other windows (bench/bench_packing.py,
    LVIS-like, max_length 20000, world_size 4): docs/benchmarks.md, section "Packing planner",
    "max_length 20000", the deal balance table.
    "Step" is one micro-batch: the unit at which ranks synchronise under ZeRO or plain DDP
    without ``no_sync``; with gradient accumulation under ``no_sync`` ranks only wait at the
    optimizer step, and balancing micro-steps balances those sums too.
    """
    errors = []
    if not is_integer(world_size) or world_size < 1:
        errors.append(f"world_size must be an integer >= 1, got {world_size!r}")
    if not is_integer(per_device_batch_size) or per_device_batch_size < 1:
        errors.append(f"per_device_batch_size must be an integer >= 1, got {per_device_batch_size!r}")
    if not is_integer(window_steps) or window_steps < 1:
        errors.append(f"window_steps must be an integer >= 1, got {window_steps!r}")
    if not is_integer(seed) or seed < 0:
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

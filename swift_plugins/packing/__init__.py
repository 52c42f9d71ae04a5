"""Planning: which samples share a pack, which rank trains which pack, from lengths alone.

    lengths --plan_packs (strategy, buffer, min fill, drop last)--> PackPlan
            --deal_packs (world size, cost model)--> Deal: packs of one step cost about the same
    JSONL   --samples.build_sample_plan (exact lengths, dense records split)--> SamplePlan

Pure numpy and Python; deterministic for given inputs and seed.
"""
from swift_plugins.packing.deal import DEFAULT_COST_C, Deal, deal_packs, pack_costs, step_costs
from swift_plugins.packing.planner import DEFAULT_STRATEGY, OVERLONG_CHOICES, STRATEGIES, PackPlan, plan_packs

__all__ = ["DEFAULT_COST_C", "DEFAULT_STRATEGY", "OVERLONG_CHOICES", "STRATEGIES", "Deal", "PackPlan", "deal_packs", "pack_costs",
           "plan_packs", "step_costs"]

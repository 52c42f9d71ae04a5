"""ms-swift's ``optimizers_map["swiftpack_multimodal"]``: the model's parameters in the groups of
:func:`swift_plugins.param_groups.group_parameters` (LLM / ViT / aligner learning rates, no decay on
norms, biases, embeddings, DoRA magnitudes), then the configured optimizer class (``--optim``,
AdamW by default). ``optimizer: multimodal`` in our YAML selects it; ms-swift's own
``multimodal`` stays as it is. Registered by ``swift_plugins.training.register_all``.

What each step applied is logged: a pre-step hook on the torch optimizer itself (the object that
updates the weights, also when DeepSpeed wraps it and hands it flat ZeRO partitions) records each
group's learning rate at the moment of the update, as train metrics ``lr_llm``, ``lr_vit``,
``lr_aligner`` next to ms-swift's ``learning_rate`` (which shows only the first group).
"""
from __future__ import annotations

from typing import List, Sequence, Union

from swift.optimizers import OptimizerCallback, optimizers_map

from swift_plugins.names import OPTIMIZER_NAME
from swift_plugins.param_groups import group_parameters

__all__ = ["MultimodalOptimizerCallback", "applied_lrs", "register"]


def applied_lrs(param_groups) -> dict:
    """``lr_<part>`` of each part's groups as the optimizer holds them now (parts: llm, vit, aligner).

    >>> applied_lrs([{"swiftpack_group": "llm/decay", "lr": 2e-4}, {"swiftpack_group": "vit/no_decay", "lr": 1e-4}])
    {'lr_llm': 0.0002, 'lr_vit': 0.0001}
    """
    out = {}
    for group in param_groups:
        name = group.get("swiftpack_group")
        if name is not None:
            out.setdefault("lr_" + name.split("/")[0], group["lr"])
    return out


def _numel(param) -> int:
    """Elements of a parameter, also when ZeRO-3 has partitioned it (``numel()`` is then 0)."""
    return int(getattr(param, "ds_numel", param.numel()))


def _as_list(value: Union[None, str, Sequence[str]]) -> List[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


class MultimodalOptimizerCallback(OptimizerCallback):
    """ms-swift adapter: the model's parameters -> :func:`group_parameters` -> the configured
    optimizer class (``--optim``, AdamW by default) with one param group per :class:`ParamGroup`."""

    def create_optimizer(self, model=None):
        from swift.utils import get_logger
        from transformers import Trainer as HfTrainer

        args = self.args
        model = self.trainer.model if model is None else model
        arch = model.model_meta.model_arch
        if arch is None:
            raise ValueError(f"optimizer multimodal needs a multimodal model (model_meta.model_arch is None for "
                             f"{type(model).__name__}); use optimizer default")
        named = list(model.named_parameters())
        groups = group_parameters(((n, p.requires_grad) for n, p in named),
                                  vision_prefixes=_as_list(arch.vision_tower), aligner_prefixes=_as_list(arch.aligner),
                                  learning_rate=args.learning_rate, vit_lr=args.vit_lr, aligner_lr=args.aligner_lr,
                                  weight_decay=args.weight_decay)
        if not groups:
            raise ValueError("optimizer multimodal: the model has no trainable parameters")
        by_name = dict(named)
        get_logger().info("swiftpack multimodal optimizer groups: " + "; ".join(
            f"{g.name}: {len(g.params)} tensors, {sum(_numel(by_name[n]) for n in g.params)} params, lr {g.lr}, "
            f"weight_decay {g.weight_decay}" for g in groups))
        param_groups = [{"params": [by_name[n] for n in g.params], "lr": g.lr, "weight_decay": g.weight_decay,
                         "swiftpack_group": g.name} for g in groups]
        optimizer_cls, optimizer_kwargs = HfTrainer.get_optimizer_cls_and_kwargs(args, model)
        optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        metrics = self.trainer.custom_metrics["train"] if self.trainer is not None else {}

        def record_applied(opt, *_):
            opt.swiftpack_applied_lrs = applied_lrs(opt.param_groups)
            for key, lr in opt.swiftpack_applied_lrs.items():
                if self.trainer is not None:
                    metrics[key].update(lr)

        optimizer.register_step_pre_hook(record_applied)
        return optimizer


def register() -> None:
    """Idempotent: ``optimizers_map["swiftpack_multimodal"]``."""
    optimizers_map[OPTIMIZER_NAME] = MultimodalOptimizerCallback

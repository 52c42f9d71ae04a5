"""ms-swift's ``optimizers_map["swiftpack_multimodal"]``: the model's parameters in the groups of
:func:`swift_plugins.param_groups.group_parameters` (LLM / ViT / aligner learning rates, no decay on
norms, biases, embeddings, DoRA magnitudes), then the configured optimizer class (``--optim``,
AdamW by default). ``optimizer: multimodal`` in our YAML selects it; ms-swift's own
``multimodal`` stays as it is. Registered by ``swift_plugins.training.register_all``.
"""
from __future__ import annotations

from typing import List, Sequence, Union

from swift.optimizers import OptimizerCallback, optimizers_map

from swift_plugins.names import OPTIMIZER_NAME
from swift_plugins.param_groups import group_parameters

__all__ = ["MultimodalOptimizerCallback", "register"]


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
            f"{g.name}: {len(g.params)} tensors, {sum(by_name[n].numel() for n in g.params)} params, lr {g.lr}, "
            f"weight_decay {g.weight_decay}" for g in groups))
        param_groups = [{"params": [by_name[n] for n in g.params], "lr": g.lr, "weight_decay": g.weight_decay,
                         "swiftpack_group": g.name} for g in groups]
        optimizer_cls, optimizer_kwargs = HfTrainer.get_optimizer_cls_and_kwargs(args, model)
        return optimizer_cls(param_groups, **optimizer_kwargs)


def register() -> None:
    """Idempotent: ``optimizers_map["swiftpack_multimodal"]``."""
    optimizers_map[OPTIMIZER_NAME] = MultimodalOptimizerCallback

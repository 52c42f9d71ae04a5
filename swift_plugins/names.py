"""The names under which this project registers itself with ms-swift and transformers.

Defined once here (plain strings, no imports) and imported by the config schema, which writes
them into ms-swift arguments, and by ``swift_plugins.training``, which registers them::

    YAML key                          ms-swift argument                 registry
    training.packing: true        ->  --template <family>_packing       swift TEMPLATE_MAPPING
                                      (names in swift_plugins.families.FAMILIES: qwen3_vl_packing, ...)
    training.optimizer: multimodal -> --optimizer swiftpack_multimodal  swift optimizers_map
    model.attn_impl: swiftpack_varlen -> --attn_impl swiftpack_varlen   transformers AttentionInterface
    training.log_data_order: true ->  --callbacks swiftpack_data_order  swift callbacks_map
    training.fused_loss: true     ->  --loss_type swiftpack_fused_ce     swift loss_map
"""
from __future__ import annotations

OPTIMIZER_NAME = "swiftpack_multimodal"
VARLEN_ATTENTION = "swiftpack_varlen"
CALLBACK_DATA_ORDER = "swiftpack_data_order"
CALLBACK_EVAL_TOKEN_MEAN = "swiftpack_eval_token_mean"
FUSED_LOSS = "swiftpack_fused_ce"

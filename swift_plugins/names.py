"""The names under which this project registers itself with ms-swift and transformers.

Defined once here (plain strings, no imports) and imported by the config schema, which writes
them into ms-swift arguments, and by ``swift_plugins.training``, which registers them::

    YAML key                          ms-swift argument                 registry
    training.packing: true        ->  --template qwen3_vl_packing       swift TEMPLATE_MAPPING
    training.optimizer: multimodal -> --optimizer swiftpack_multimodal  swift optimizers_map
    model.attn_impl: swiftpack_varlen -> --attn_impl swiftpack_varlen   transformers AttentionInterface
    training.save_delay_steps: N  ->  --callbacks swiftpack_save_delay  swift callbacks_map
    training.fused_loss: true     ->  --loss_type swiftpack_fused_ce     swift loss_map
"""
from __future__ import annotations

PACKING_TEMPLATE = "qwen3_vl_packing"
OPTIMIZER_NAME = "swiftpack_multimodal"
VARLEN_ATTENTION = "swiftpack_varlen"
CALLBACK_SAVE_DELAY = "swiftpack_save_delay"
CALLBACK_DATA_ORDER = "swiftpack_data_order"
CALLBACK_PACKING = "swiftpack_packing"
CALLBACK_EVAL_TOKEN_MEAN = "swiftpack_eval_token_mean"
FUSED_LOSS = "swiftpack_fused_ce"
# Our options travel as extra ms-swift argument fields named FIELD_PREFIX + option name.
FIELD_PREFIX = "swiftpack_"

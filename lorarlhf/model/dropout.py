"""Turning dropout off in a model, however its family implements it.

Some families drop out through nn.Dropout modules (GPT-2's attn_dropout, peft's lora_dropout); others keep
the probability as a plain float and call the functional form in forward: OPT's decoder layers read
`self.dropout` and `self.activation_dropout`, Llama-style attention reads `self.attention_dropout`, Falcon reads
`self.config.attention_dropout`, and OPT's decoder skips whole layers with probability `self.layerdrop`. Setting
every one of these to 0 on the (frozen, lorarlhf-owned) model covers them all without patching transformers.
"""

from __future__ import annotations

import re

from torch import nn
from transformers import PretrainedConfig

DROPOUT_NAME = re.compile(r"dropout|pdrop|layerdrop")
"""Attribute and config-field names that hold a drop probability (attention_dropout, resid_pdrop, layerdrop...)."""


def disable_dropout(model: nn.Module) -> None:
    """Set every drop probability of `model` to 0: nn.Dropout modules, float attributes of its modules and the
    float fields of its configs (and their nested configs, such as text_config) that forward passes read."""
    configs, seen = [], set()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        _zero_dropout_fields(module)
        config = getattr(module, "config", None)
        if isinstance(config, PretrainedConfig):
            configs.append(config)
    while configs:
        config = configs.pop()
        if id(config) in seen:
            continue
        seen.add(id(config))
        _zero_dropout_fields(config)
        configs += [value for value in vars(config).values() if isinstance(value, PretrainedConfig)]  # text_config


def _zero_dropout_fields(owner) -> None:
    names = [n for n, v in vars(owner).items() if isinstance(v, float) and v != 0.0 and DROPOUT_NAME.search(n)]
    for name in names:
        setattr(owner, name, 0.0)

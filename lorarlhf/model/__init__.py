"""The Hydra: one frozen base model, loaded and quantized once, with a LoRA adapter and head per role.

Loading and quantization, LoRA settings, scalar heads, the one tokenization rule, saving and loading a Hydra,
export of the actor merged into the base, and byte counting. Knows no data format and no training method.
"""

from lorarlhf.model.quiet import hide_bitsandbytes_kernel_notice

hide_bitsandbytes_kernel_notice()  # before any module here imports peft, which imports bitsandbytes

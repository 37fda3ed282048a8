"""Fused kernels from hidden states to token log-probs, entropy and KL (installed as lorarlhf.kernels).

The LM head is applied chunk by chunk over tokens, so the full [N, V] logits never exist at once, in forward
or backward. Behind the same functions, CUDA tensors run Triton kernels and CPU tensors the chunked PyTorch
path; with TRITON_INTERPRET=1 set before import, CPU tensors run the Triton kernels in the interpreter (how CI
tests them without a GPU). `_common.backend_for` makes that choice.

    fused_linear_logprobs  log p(target) per token, optionally with the entropy of each row
    token_kl               per-token KL estimators k1 / k2 / k3 from sampled-token log-probs
    fused_linear_kl        exact full-vocabulary KL(policy || reference) per token
"""

__all__ = ["fused_linear_logprobs", "token_kl", "fused_linear_kl"]

# Run from the repository root, this folder is also importable as a top-level `kernels`, the name of the
# Hugging Face hub-kernels package that transformers and bitsandbytes probe for. Under that name it
# defines nothing, so their `from kernels import get_kernel` fails the way a missing package does.
if __name__ == "lorarlhf.kernels":
    # The logits tile budget, which the memory planner counts.
    from ._common import LOGITS_CHUNK_BYTES as LOGITS_CHUNK_BYTES

    # Which path a device's tensors take, for `lorarlhf doctor` to report truthfully.
    from ._common import backend_for as backend_for
    from ._common import interpreting as interpreting
    from ._common import triton_available as triton_available
    from .linear_kl import fused_linear_kl
    from .logprobs import fused_linear_logprobs
    from .token_kl import token_kl
else:
    __all__ = []

"""Per-token KL estimators k1, k2, k3 (Schulman, "Approximating KL Divergence", 2020).

The RLHF KL penalty is estimated from the log-probs of the sampled tokens only, under the policy (logp) and
the reference model (ref_logp). With d = ref_logp - logp = log(q/p) at a token sampled from p:
    k1 = -d                  unbiased, high variance, can be negative
    k2 = d^2 / 2             biased, low variance, >= 0
    k3 = (e^d - 1) - d       unbiased, low variance, >= 0
One autograd Function for all three keeps the elementwise math (and a later fused kernel) in one place.
"""

from __future__ import annotations

import torch

ESTIMATORS = ("k1", "k2", "k3")


def token_kl_reference(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """The estimators written as their textbook formulas, for tests."""
    if estimator == "k1":
        return logp - ref_logp
    if estimator == "k2":
        return 0.5 * (logp - ref_logp) ** 2
    if estimator == "k3":
        return torch.exp(ref_logp - logp) - 1 - (ref_logp - logp)
    raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")


def _kl_and_slope(d: torch.Tensor, estimator: str, want_slope: bool):
    """k(d) and, if wanted, dk/dd for d = ref_logp - logp."""
    if estimator == "k1":
        return -d, (torch.full_like(d, -1.0) if want_slope else None)
    if estimator == "k2":
        return 0.5 * d * d, (d if want_slope else None)
    # expm1: e^d - 1 without cancellation at small d, i.e. while the policy is still close to the reference.
    em1 = torch.expm1(d)
    return em1 - d, em1


class TokenKLFunction(torch.autograd.Function):
    """Elementwise k(d) with d = ref_logp - logp.

    Values:      k1 = -d,        k2 = d^2 / 2,     k3 = e^d - 1 - d
    Slope k'(d): k1 = -1,        k2 = d,           k3 = e^d - 1
    Gradients, for upstream g = dL/dk:
        dL/dlogp     = -g k'(d)
        dL/dref_logp =  g k'(d)
    Computed in float32 (float64 for float64 inputs); the output has the promoted input dtype and each
    gradient its input's dtype. Saves only the two inputs.
    """

    @staticmethod
    def forward(ctx, logp, ref_logp, estimator):
        out_dtype = torch.promote_types(logp.dtype, ref_logp.dtype)
        dtype = torch.float64 if out_dtype == torch.float64 else torch.float32
        d = ref_logp.to(dtype) - logp.to(dtype)
        kl, _ = _kl_and_slope(d, estimator, want_slope=False)
        ctx.save_for_backward(logp, ref_logp)
        ctx.estimator, ctx.dtype = estimator, dtype
        return kl.to(out_dtype)

    @staticmethod
    def backward(ctx, grad):
        logp, ref_logp = ctx.saved_tensors
        need_logp, need_ref = ctx.needs_input_grad[:2]
        if not (need_logp or need_ref):
            return None, None, None
        d = ref_logp.to(ctx.dtype) - logp.to(ctx.dtype)
        _, slope = _kl_and_slope(d, ctx.estimator, want_slope=True)
        g_ref = grad.to(ctx.dtype) * slope  # dL/dref_logp; dL/dlogp is its negative
        return (
            (-g_ref).to(logp.dtype) if need_logp else None,
            g_ref.to(ref_logp.dtype) if need_ref else None,
            None,
        )


def token_kl(logp: torch.Tensor, ref_logp: torch.Tensor, *, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL(policy || reference) estimate from the sampled tokens' log-probs.

    Args:
        logp: log-probs of the sampled tokens under the policy, any shape, floating.
        ref_logp: the same tokens' log-probs under the reference model, same shape.
        estimator: "k1" (logp - ref), "k2" (0.5 (logp - ref)^2) or "k3" (exp(ref - logp) - 1 - (ref - logp)).

    Returns:
        Elementwise estimate, same shape, differentiable w.r.t. both inputs.
    """
    if estimator not in ESTIMATORS:
        names = ", ".join(repr(e) for e in ESTIMATORS)
        raise ValueError(f"estimator must be one of {names}; got {estimator!r}")
    for name, t in (("logp", logp), ("ref_logp", ref_logp)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a floating torch.Tensor, got {got}")
    if logp.shape != ref_logp.shape:
        raise ValueError(f"ref_logp must have the same shape as logp {tuple(logp.shape)}, got {tuple(ref_logp.shape)}")
    # Dispatch point: a fused Triton kernel may take CUDA tensors here later; today it is the torch Function.
    return TokenKLFunction.apply(logp, ref_logp, estimator)

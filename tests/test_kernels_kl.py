"""token_kl estimators and fused_linear_kl against float64 references: values, gradients, memory, validation."""

import math

import pytest
import torch
import torch.nn.functional as F
from kernel_testing import GRAD_TOL, OUT_TOL, ShapeRecorder, assert_grad_close, rel_err, shape_checks_apply
from lorarlhf.kernels import fused_linear_kl, token_kl
from lorarlhf.kernels.linear_kl import LinearKLFunction, linear_kl_reference
from lorarlhf.kernels.token_kl import token_kl_reference

ESTIMATORS = ["k1", "k2", "k3"]


# ---------------------------------------------------------------- token_kl


def test_token_kl_hand_computed_values():
    logp = torch.tensor([math.log(0.5)])
    ref = torch.tensor([math.log(0.25)])
    log2 = math.log(2.0)
    expected = {"k1": log2, "k2": 0.5 * log2**2, "k3": 0.5 - 1 + log2}
    for est, value in expected.items():
        torch.testing.assert_close(token_kl(logp, ref, estimator=est), torch.tensor([value]))
    assert token_kl(logp, ref).item() == pytest.approx(log2)  # k1 is the default


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_token_kl_values_and_grads_match_formula(estimator, dtype):
    gen = torch.Generator().manual_seed(0)
    shape = (3, 7, 5)  # any shape: elementwise
    logp = (-torch.rand(shape, generator=gen) * 5).to(dtype).requires_grad_()
    ref = (-torch.rand(shape, generator=gen) * 5).to(dtype).requires_grad_()
    upstream = torch.randn(shape, generator=gen).to(dtype)

    out = token_kl(logp, ref, estimator=estimator)
    g_logp, g_ref = torch.autograd.grad(out, (logp, ref), upstream)

    logp64, ref64 = (t.detach().double().requires_grad_() for t in (logp, ref))
    expected = token_kl_reference(logp64, ref64, estimator)
    e_logp, e_ref = torch.autograd.grad(expected, (logp64, ref64), upstream.double())
    assert out.shape == shape and out.dtype == dtype
    torch.testing.assert_close(out.double(), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(g_logp.double(), e_logp, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(g_ref.double(), e_ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_token_kl_gradcheck(estimator):
    gen = torch.Generator().manual_seed(1)
    logp = torch.randn(11, generator=gen, dtype=torch.float64).requires_grad_()
    ref = torch.randn(11, generator=gen, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: token_kl(a, b, estimator=estimator), (logp, ref))


def test_token_kl_k2_k3_nonnegative_and_zero_at_equality():
    gen = torch.Generator().manual_seed(2)
    logp = -torch.rand(1000, generator=gen) * 10
    ref = -torch.rand(1000, generator=gen) * 10
    assert (token_kl(logp, ref, estimator="k2") >= 0).all()
    assert (token_kl(logp, ref, estimator="k3") >= 0).all()
    assert (token_kl(logp, ref, estimator="k1") < 0).any()  # k1 is unbiased but not pointwise >= 0
    for est in ESTIMATORS:
        assert torch.equal(token_kl(logp, logp.clone(), estimator=est), torch.zeros(1000))


def test_token_kl_k3_accurate_for_tiny_differences():
    # exp(d) - 1 - d cancels catastrophically for tiny d; the kernel uses expm1 and keeps d^2/2.
    logp = torch.tensor([-1.0], dtype=torch.float64)
    ref = logp + 1e-6
    torch.testing.assert_close(
        token_kl(logp, ref, estimator="k3"), torch.tensor([0.5e-12], dtype=torch.float64), rtol=1e-5, atol=0
    )


def test_token_kl_reference_side_detached_and_low_precision():
    logp = torch.tensor([-1.0, -2.0, -0.5], dtype=torch.bfloat16, requires_grad=True)
    ref = torch.tensor([-1.5, -1.0, -0.5], dtype=torch.bfloat16)  # reference model: no grad
    out = token_kl(logp, ref, estimator="k3")
    assert out.dtype == torch.bfloat16
    out.sum().backward()
    assert logp.grad.dtype == torch.bfloat16
    # dk3/dlogp = 1 - exp(ref - logp)
    expected = 1 - torch.exp(ref.double() - logp.detach().double())
    torch.testing.assert_close(logp.grad.double(), expected, atol=1e-5, rtol=2**-7)


def test_token_kl_validation():
    a = torch.zeros(4)
    with pytest.raises(ValueError, match=r"estimator must be one of 'k1', 'k2', 'k3'; got 'k4'"):
        token_kl(a, a, estimator="k4")
    with pytest.raises(ValueError, match=r"ref_logp must have the same shape as logp \(4,\), got \(2, 2\)"):
        token_kl(a, a.view(2, 2))
    with pytest.raises(ValueError, match=r"logp must be a floating torch.Tensor, got torch.int64"):
        token_kl(torch.zeros(4, dtype=torch.long), a)


# ---------------------------------------------------------------- fused_linear_kl

# (N, H, V, rows per chunk or None for the memory-budget rule)
SHAPES = [(37, 19, 131, None), (37, 19, 131, 8), (5, 8, 7, None), (64, 16, 50, 3), (1, 12, 1271, None)]


def make_kl_inputs(n, h, v, dtype=torch.float32, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen)
    # The reference is a nearby model, as in RLHF: same tokens, perturbed hidden states.
    ref_hidden = hidden + 0.5 * torch.randn(n, h, generator=gen)
    weight = torch.randn(v, h, generator=gen) * 2 / h**0.5
    upstream = torch.randn(n, generator=gen)
    return tuple(t.to(device) for t in (hidden.to(dtype), ref_hidden.to(dtype), weight.to(dtype), upstream))


def kl_div_reference(hidden, ref_hidden, weight, temperature):
    """KL(p || q) via torch's own kl_div, in float64: kl_div(input=log q, target=log p) = sum p (log p - log q)."""
    w = weight.double()
    logp = torch.log_softmax(hidden.double() @ w.T / temperature, dim=-1)
    logq = torch.log_softmax(ref_hidden.double() @ w.T / temperature, dim=-1)
    return F.kl_div(logq, logp, reduction="none", log_target=True).sum(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.kernels
def test_linear_kl_matches_reference_values_and_grads(backend_device, shape, temperature, dtype):
    _, device = backend_device
    n, h_dim, v, rows = shape
    hidden, ref_hidden, weight, upstream = make_kl_inputs(n, h_dim, v, dtype, device=device)
    h, r, w = (t.clone().requires_grad_() for t in (hidden, ref_hidden, weight))

    kl = fused_linear_kl(h, r, w, temperature=temperature, _chunk_rows=rows)
    kl.backward(upstream)

    h64, r64, w64 = (t.double().requires_grad_() for t in (hidden, ref_hidden, weight))
    expected = kl_div_reference(h64, r64, w64, temperature)
    torch.testing.assert_close(linear_kl_reference(h64, r64, w64, temperature), expected)  # two references agree
    e_h, e_r, e_w = torch.autograd.grad(expected, (h64, r64, w64), upstream.double())

    assert kl.shape == (n,) and kl.dtype == torch.float32
    torch.testing.assert_close(kl.double(), expected, **OUT_TOL)
    for got, ref in ((h.grad, e_h), (r.grad, e_r), (w.grad, e_w)):
        assert got.dtype == dtype
        assert_grad_close(got, ref, dtype)


@pytest.mark.kernels
def test_linear_kl_nonnegative_and_zero_for_identical_models(backend_device):
    _, device = backend_device
    hidden, ref_hidden, weight, _ = make_kl_inputs(64, 16, 50, seed=3, device=device)
    kl = fused_linear_kl(hidden, ref_hidden, weight, temperature=0.7, _chunk_rows=5)
    assert (kl > 0).all()  # distinct distributions: strictly positive
    h = hidden.clone().requires_grad_()
    same = fused_linear_kl(h, hidden, weight, _chunk_rows=5)
    assert torch.equal(same, torch.zeros(64, device=device))
    # KL is at its minimum there, so the gradient w.r.t. the policy vanishes too.
    (g,) = torch.autograd.grad(same, h, torch.randn(64, device=device))
    assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.kernels
def test_linear_kl_only_policy_trainable(backend_device):
    # The usual RLHF case: frozen head, reference hidden states computed under no_grad.
    _, device = backend_device
    hidden, ref_hidden, weight, upstream = make_kl_inputs(37, 19, 131, seed=4, device=device)
    h = hidden.clone().requires_grad_()
    kl = fused_linear_kl(h, ref_hidden, weight, _chunk_rows=8)
    with ShapeRecorder() as rec:
        kl.backward(upstream)
    assert weight.grad is None and ref_hidden.grad is None
    # Backward is a per-row scaling of what forward prepared: no [V, H] tensor, no (rows, V) tile.
    assert not [shape for shape in rec.shapes if 131 in shape]
    h64 = hidden.double().requires_grad_()
    (e_h,) = torch.autograd.grad(kl_div_reference(h64, ref_hidden, weight, 1.0), h64, upstream.double())
    torch.testing.assert_close(h.grad.double(), e_h, **GRAD_TOL[torch.float32])


@pytest.mark.parametrize("vocab", [32003, 50257])
@pytest.mark.kernels
def test_linear_kl_real_vocabulary_sizes(backend_device, vocab):
    _, device = backend_device
    hidden, ref_hidden, weight, upstream = make_kl_inputs(3, 8, vocab, seed=7, device=device)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    kl = fused_linear_kl(h, ref_hidden, w, temperature=0.9)
    kl.backward(upstream)
    h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    expected = kl_div_reference(h64, ref_hidden, w64, 0.9)
    e_h, e_w = torch.autograd.grad(expected, (h64, w64), upstream.double())
    assert rel_err(kl, expected) <= 1e-5
    assert rel_err(h.grad, e_h) <= 1e-5 and rel_err(w.grad, e_w) <= 1e-5


@pytest.mark.kernels
def test_linear_kl_backends_agree(backend_device):
    from lorarlhf.kernels._common import force_backend

    backend, device = backend_device
    hidden, ref_hidden, weight, upstream = make_kl_inputs(37, 19, 131, seed=8, device=device)
    results = []
    for name in ("torch", backend):
        with force_backend(name):
            h, r, w = (t.clone().requires_grad_() for t in (hidden, ref_hidden, weight))
            kl = fused_linear_kl(h, r, w, temperature=0.8, _chunk_rows=6)
            kl.backward(upstream)
            results.append((kl, h.grad, r.grad, w.grad))
    for got, ref in zip(*results, strict=True):
        torch.testing.assert_close(got, ref, atol=2e-6, rtol=2e-6)


@pytest.mark.kernels
def test_linear_kl_autocast_region_does_not_lower_precision():
    hidden, ref_hidden, weight, upstream = make_kl_inputs(37, 19, 131, seed=6)
    h, r, w = (t.clone().requires_grad_() for t in (hidden, ref_hidden, weight))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kl = fused_linear_kl(h, r, w, _chunk_rows=8)
        kl.backward(upstream)
    h64, r64, w64 = (t.double().requires_grad_() for t in (hidden, ref_hidden, weight))
    expected = kl_div_reference(h64, r64, w64, 1.0)
    torch.testing.assert_close(kl.double(), expected, **OUT_TOL)
    expected_grads = torch.autograd.grad(expected, (h64, r64, w64), upstream.double())
    for got, ref in zip((h.grad, r.grad, w.grad), expected_grads, strict=True):
        torch.testing.assert_close(got.double(), ref, **GRAD_TOL[torch.float32])


def test_linear_kl_gradcheck_float64():
    hidden, ref_hidden, weight, _ = make_kl_inputs(6, 4, 5, seed=5)
    args = tuple(t.double().requires_grad_() for t in (hidden, ref_hidden, weight))
    assert torch.autograd.gradcheck(lambda h, r, w: fused_linear_kl(h, r, w, temperature=0.7, _chunk_rows=4), args)
    assert torch.autograd.gradcheck(
        lambda h, r, w: LinearKLFunction.apply(h, r, w, 1.3, None, 2, "torch", True, True), args
    )


@pytest.mark.kernels
def test_linear_kl_empty_batch(backend_device):
    _, device = backend_device
    _, _, weight, _ = make_kl_inputs(1, 8, 7, device=device)
    h = torch.zeros(0, 8, requires_grad=True, device=device)
    w = weight.clone().requires_grad_()
    kl = fused_linear_kl(h, torch.zeros(0, 8, device=device), w)
    assert kl.shape == (0,)
    kl.sum().backward()
    assert h.grad.shape == (0, 8) and torch.equal(w.grad, torch.zeros_like(w))


@pytest.mark.kernels
def test_linear_kl_memory_never_builds_full_logits_and_saves_only_inputs_and_row_stats(backend_device):
    backend, device = backend_device
    n, h_dim, v, rows = 64, 8, 50, 3
    hidden, ref_hidden, weight, upstream = make_kl_inputs(n, h_dim, v, device=device)
    h, r, w = (t.clone().requires_grad_() for t in (hidden, ref_hidden, weight))

    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), ShapeRecorder() as fwd:
        kl = fused_linear_kl(h, r, w, _chunk_rows=rows)
    with ShapeRecorder() as bwd:
        kl.backward(upstream)

    limit = max(rows * v, v * h_dim, n * h_dim)
    assert limit < n * v
    for rec in (fwd, bwd) if shape_checks_apply(backend) else ():
        assert rec.shapes
        assert max(torch.Size(s).numel() for s in rec.shapes) <= limit
        assert all(s[0] in range(rows + 1) or s[0] == h_dim for s in rec.shapes if len(s) == 2 and s[1] == v)

    input_ptrs = {t.data_ptr() for t in (h, r, w)}
    assert sum(t.data_ptr() in input_ptrs for t in saved) == 3
    others = [t for t in saved if t.data_ptr() not in input_ptrs]
    stats = [t for t in others if t.shape == (n,)]  # lse(p), lse(q), KL
    prepared = [t for t in others if t.shape == (n, h_dim)]  # W^T dKL/dz and W^T dKL/dy, per row
    assert len(stats) == 3 and len(prepared) == 2 and len(others) == 5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(hidden=torch.randn(5)), r"hidden must be 2-D \[N, H\], got shape \(5,\)"),
        (dict(ref_hidden=torch.randn(4, 8)), r"ref_hidden must have the same shape as hidden \(5, 8\), got \(4, 8\)"),
        (dict(ref_hidden=torch.randn(5, 8, 1)), r"ref_hidden must be 2-D \[N, H\]"),
        (dict(weight=torch.randn(7, 9)), r"weight must have shape \[V, H\] with H = 8"),
        (dict(weight=torch.randn(7, 8, 1)), r"weight must be 2-D \[V, H\]"),
        (dict(temperature=0), r"temperature must be a finite number > 0, got 0"),
        (dict(temperature=float("inf")), r"temperature must be a finite number > 0"),
    ],
)
def test_linear_kl_validation(kwargs, match):
    args = dict(hidden=torch.randn(5, 8), ref_hidden=torch.randn(5, 8), weight=torch.randn(7, 8), temperature=1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        fused_linear_kl(args["hidden"], args["ref_hidden"], args["weight"], temperature=args["temperature"])


# ---------------------------------------------------------------- soft-capped heads (Gemma 2)

CAP = 3.0  # bends logits of O(1)-O(10) hard: a missing or misplaced cap cannot pass


def softcapped_kl_reference(hidden, ref_hidden, weight, temperature, cap):
    """KL(p || q) in float64 from full logits capped as transformers' Gemma 2 does (lm_head; / cap; tanh; * cap),
    then the temperature, then torch's kl_div."""

    def capped_logp(h):
        logits = h.double() @ weight.double().T  # (N, V)
        logits = torch.tanh(logits / cap) * cap
        return torch.log_softmax(logits / temperature, dim=-1)

    return F.kl_div(capped_logp(ref_hidden), capped_logp(hidden), reduction="none", log_target=True).sum(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("shape", [(37, 19, 131, 8), (5, 8, 7, None), (1, 12, 1271, None)])
@pytest.mark.kernels
def test_soft_capped_linear_kl_matches_reference_values_and_grads(backend_device, shape, temperature, dtype):
    _, device = backend_device
    n, h_dim, v, rows = shape
    hidden, ref_hidden, weight, upstream = make_kl_inputs(n, h_dim, v, dtype, seed=11, device=device)
    h, r, w = (t.clone().requires_grad_() for t in (hidden, ref_hidden, weight))

    kl = fused_linear_kl(h, r, w, temperature=temperature, softcap=CAP, _chunk_rows=rows)
    kl.backward(upstream)

    h64, r64, w64 = (t.double().requires_grad_() for t in (hidden, ref_hidden, weight))
    expected = softcapped_kl_reference(h64, r64, w64, temperature, CAP)
    torch.testing.assert_close(linear_kl_reference(h64, r64, w64, temperature, CAP), expected)
    assert (kl_div_reference(h64, r64, w64, temperature) - expected).abs().max() > 0.01  # the cap matters
    e_h, e_r, e_w = torch.autograd.grad(expected, (h64, r64, w64), upstream.double())
    torch.testing.assert_close(kl.double(), expected, **OUT_TOL)
    for got, ref in ((h.grad, e_h), (r.grad, e_r), (w.grad, e_w)):
        assert got.dtype == dtype
        assert_grad_close(got, ref, dtype)


@pytest.mark.kernels
def test_soft_capped_linear_kl_only_policy_trainable(backend_device):
    _, device = backend_device
    hidden, ref_hidden, weight, upstream = make_kl_inputs(37, 19, 131, seed=12, device=device)
    h = hidden.clone().requires_grad_()
    kl = fused_linear_kl(h, ref_hidden, weight, temperature=0.8, softcap=CAP, _chunk_rows=8)
    with ShapeRecorder() as rec:
        kl.backward(upstream)
    assert not [shape for shape in rec.shapes if 131 in shape]
    h64 = hidden.double().requires_grad_()
    (e_h,) = torch.autograd.grad(softcapped_kl_reference(h64, ref_hidden, weight, 0.8, CAP), h64, upstream.double())
    torch.testing.assert_close(h.grad.double(), e_h, **GRAD_TOL[torch.float32])


@pytest.mark.kernels
def test_soft_capped_linear_kl_backends_agree(backend_device):
    from lorarlhf.kernels._common import force_backend

    backend, device = backend_device
    hidden, ref_hidden, weight, upstream = make_kl_inputs(37, 19, 131, seed=13, device=device)
    results = []
    for name in ("torch", backend):
        with force_backend(name):
            h, r, w = (t.clone().requires_grad_() for t in (hidden, ref_hidden, weight))
            kl = fused_linear_kl(h, r, w, temperature=0.8, softcap=CAP, _chunk_rows=6)
            kl.backward(upstream)
            results.append((kl, h.grad, r.grad, w.grad))
    for got, ref in zip(*results, strict=True):
        torch.testing.assert_close(got, ref, atol=2e-6, rtol=2e-6)


def test_soft_capped_linear_kl_gradcheck_float64():
    hidden, ref_hidden, weight, _ = make_kl_inputs(6, 4, 5, seed=15)
    args = tuple(t.double().requires_grad_() for t in (hidden, ref_hidden, weight))
    assert torch.autograd.gradcheck(
        lambda h, r, w: fused_linear_kl(h, r, w, temperature=0.7, softcap=1.5, _chunk_rows=4), args
    )


@pytest.mark.parametrize("softcap", [0, -1.0, float("inf"), float("nan"), False])
def test_soft_capped_linear_kl_validation(softcap):
    h = torch.randn(5, 8)
    with pytest.raises(ValueError, match=r"softcap must be None \(no soft-capping\) or a finite number > 0, got"):
        fused_linear_kl(h, h, torch.randn(7, 8), softcap=softcap)

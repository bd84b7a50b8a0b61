"""chunk_compress: the reference against a direct loop, the Triton kernels (under the
interpreter on a CPU) against the reference, invariants, and input checks."""

import math

import pytest
import torch
from helpers import GRAD_LAYOUTS, assert_close, layout_loss

from memmodel.kernels.chunk_compress import chunk_compress, chunk_compress_ref
from memmodel.kernels.utils import is_interpreter

# The gpu tests check the compiled kernels; with the interpreter on they would run through
# it instead (slowly, and Triton 3.9's interpreter multiplies bfloat16 blocks wrongly).
COMPILED = pytest.mark.skipif(is_interpreter() and torch.cuda.is_available(),
                              reason="the gpu tests need TRITON_INTERPRET=0")


def make_inputs(B, T, H, Dk, Dv, P, dtype=torch.float32, q_scale=1.0):
    """Leaves k: [B, T, H, Dk], v: [B, T, H, Dv], q_pool: [H, P, Dk] (float32)."""
    k = torch.randn(B, T, H, Dk).to(dtype).requires_grad_()
    v = torch.randn(B, T, H, Dv).to(dtype).requires_grad_()
    q_pool = (torch.randn(H, P, Dk) * q_scale).requires_grad_()
    return k, v, q_pool


def run_and_grad(fn, k, v, q_pool, chunk_size, seed=1, **kw):
    """Outputs of fn and the gradients of a fixed random projection of all three."""
    s_k, s_v, score = fn(k, v, q_pool, chunk_size, **kw)
    g = torch.Generator().manual_seed(seed)
    loss = sum((x.float() * torch.randn(x.shape, generator=g).to(x.device)).sum()
               for x in (s_k, s_v, score))
    grads = torch.autograd.grad(loss, (k, v, q_pool))
    return (s_k, s_v, score), dict(zip(("k", "v", "q_pool"), grads))


def chunk_compress_loop(k, v, q_pool, chunk_size, scale=None):
    """The definition, one (batch, chunk, head, summary) at a time, in float64."""
    B, T, H, Dk = k.shape
    scale = 1.0 / math.sqrt(Dk) if scale is None else scale
    s_k, s_v, score = [], [], []
    for b in range(B):
        for c0 in range(0, T, chunk_size):
            for h in range(H):
                kc = k[b, c0:c0 + chunk_size, h].double()  # the chunk's real tokens only
                vc = v[b, c0:c0 + chunk_size, h].double()
                for p in range(q_pool.shape[1]):
                    z = kc @ q_pool[h, p].double() * scale
                    alpha = torch.softmax(z, 0)
                    s_k.append(alpha @ kc)
                    s_v.append(alpha @ vc)
                    score.append(torch.logsumexp(z, 0))
    NC, P = -(-T // chunk_size), q_pool.shape[1]
    return (torch.stack(s_k).view(B, NC, H, P, Dk), torch.stack(s_v).view(B, NC, H, P, -1),
            torch.stack(score).view(B, NC, H, P))


def check_against(fn, oracle, shape, chunk_size, rtol=None, **kw):
    B, T, H, Dk, Dv, P = shape
    k, v, q_pool = make_inputs(B, T, H, Dk, Dv, P, q_scale=kw.pop("q_scale", 1.0))
    out, grads = run_and_grad(fn, k, v, q_pool, chunk_size, **kw)
    ref, ref_grads = run_and_grad(oracle, k, v, q_pool, chunk_size, **kw)
    NC = -(-T // chunk_size)
    assert out[0].shape == (B, NC, H, P, Dk) and out[1].shape == (B, NC, H, P, Dv)
    assert out[2].shape == (B, NC, H, P) and out[2].dtype == torch.float32
    for name, a, e in zip(("s_k", "s_v", "score"), out, ref):
        assert_close(a, e.to(a.dtype), name, rtol=rtol)
    for name in grads:
        assert_close(grads[name], ref_grads[name].to(grads[name].dtype), f"grad {name}",
                     rtol=rtol)


# (B, T, H, Dk, Dv, P), C: T < C, T a multiple of C, a partial last chunk, C above the
# kernel's 64-token block (two blocks per chunk, the second partial), widths that are not
# powers of two, Dk != Dv, P = 1 and P > 1.
CASES = [
    pytest.param((1, 1, 1, 16, 16, 1), 4, id="T1-C4-P1"),
    pytest.param((2, 10, 2, 16, 8, 3), 16, id="T10-lt-C16-P3"),
    pytest.param((2, 64, 2, 16, 16, 1), 16, id="T64-C16-P1-whole"),
    pytest.param((2, 37, 3, 16, 8, 3), 8, id="T37-C8-P3-partial"),
    pytest.param((1, 250, 2, 20, 12, 2), 100, id="T250-C100-P2-two-blocks"),
]


@pytest.mark.parametrize("shape,C", CASES)
def test_ref_equals_loop(shape, C):
    check_against(chunk_compress_ref, chunk_compress_loop, shape, C)


@pytest.mark.parametrize("shape,C", CASES)
def test_triton_equals_ref(shape, C):
    check_against(lambda *a, **kw: chunk_compress(*a, backend="triton", **kw),
                  chunk_compress_ref, shape, C)


def test_triton_large_logits_and_explicit_scale():
    """Logits of magnitude ~100 (a sharp softmax) and a given scale, both paths."""
    shape = (1, 70, 2, 16, 16, 4)
    kw = dict(scale=3.0, q_scale=8.0)
    check_against(chunk_compress_ref, chunk_compress_loop, shape, 32, **dict(kw))
    check_against(lambda *a, **k: chunk_compress(*a, backend="triton", **k),
                  chunk_compress_ref, shape, 32, **dict(kw))


def test_triton_noncontiguous_inputs():
    B, T, H, D, P, C = 2, 40, 2, 16, 2, 16
    k = torch.randn(B, T, H, 2 * D)[..., ::2].requires_grad_()  # stride 2 in Dh
    v = torch.randn(B, H, T, D).transpose(1, 2).requires_grad_()  # time not outermost
    q_pool = torch.randn(P, H, D).transpose(0, 1).requires_grad_()
    assert not (k.is_contiguous() or v.is_contiguous() or q_pool.is_contiguous())
    out, grads = run_and_grad(lambda *a: chunk_compress(*a, backend="triton"), k, v, q_pool, C)
    ref, ref_grads = run_and_grad(chunk_compress_ref, k, v, q_pool, C)
    for name, a, e in zip(("s_k", "s_v", "score"), out, ref):
        assert_close(a, e, name)
    for name in grads:
        assert_close(grads[name], ref_grads[name], f"grad {name}")


@pytest.mark.parametrize("layout", GRAD_LAYOUTS)
def test_triton_incoming_gradient_layouts(layout):
    """The gradients of s_k, s_v and score may come strided or broadcast (stride 0, as a
    plain sum gives); the backward reads them as they are laid out."""
    k, v, q_pool = make_inputs(2, 37, 2, 16, 8, 3)
    grads = []
    for backend in ("triton", "torch"):
        out = chunk_compress(k, v, q_pool, 8, backend=backend)
        grads.append(torch.autograd.grad(layout_loss(out, layout), (k, v, q_pool)))
    for name, g, g_ref in zip(("k", "v", "q_pool"), *grads):
        assert_close(g, g_ref, f"grad {name}")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_chunks_are_independent(backend):
    """Compressing a prefix of whole chunks and the rest apart equals one call."""
    k, v, q_pool = make_inputs(1, 45, 2, 16, 16, 2)
    whole = chunk_compress(k, v, q_pool, 16, backend=backend)
    head = chunk_compress(k[:, :32], v[:, :32], q_pool, 16, backend=backend)
    tail = chunk_compress(k[:, 32:], v[:, 32:], q_pool, 16, backend=backend)
    for name, w, a, b in zip(("s_k", "s_v", "score"), whole, head, tail):
        assert_close(w, torch.cat([a, b], dim=1), name)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_nan_in_one_chunk_stays_in_it(backend):
    """NaN in k and v at token 13 (chunk 2 of C = 5, a chunk shorter than the kernel's
    16-token block): every other chunk's summaries and the gradients of its tokens are
    finite and equal the clean run's, bit for bit."""
    k, v, q_pool = make_inputs(2, 23, 2, 16, 8, 3)
    fn = lambda *a: chunk_compress(*a, backend=backend)
    out, grads = run_and_grad(fn, k, v, q_pool, 5)
    k_nan, v_nan = (x.detach().clone() for x in (k, v))
    k_nan[:, 13], v_nan[:, 13] = float("nan"), float("nan")
    k_nan.requires_grad_(), v_nan.requires_grad_()
    out_nan, grads_nan = run_and_grad(fn, k_nan, v_nan, q_pool, 5)
    other = [0, 1, 3, 4]  # chunks; tokens 10-14 are chunk 2
    for name, a, e in zip(("s_k", "s_v", "score"), out_nan, out):
        assert torch.isfinite(a[:, other]).all(), name
        assert torch.equal(a[:, other], e[:, other]), name
        assert torch.isnan(a[:, 2]).all(), name
    tokens = [t for t in range(23) if not 10 <= t < 15]
    for name in ("k", "v"):
        assert torch.equal(grads_nan[name][:, tokens], grads[name][:, tokens]), f"grad {name}"


def test_score_is_logsumexp_and_summary_is_convex_combination():
    """One summary of a chunk whose keys are all equal: weights 1/n, score log n + z."""
    k = torch.ones(1, 12, 1, 16)  # a partial last chunk of 4 tokens with C = 8
    v = torch.arange(12.0).view(1, 12, 1, 1).expand(1, 12, 1, 16).contiguous()
    q_pool = torch.full((1, 1, 16), 0.5)
    for backend in ("torch", "triton"):
        s_k, s_v, score = chunk_compress(k, v, q_pool, 8, backend=backend)
        z = 0.5 * 16 / math.sqrt(16)
        expected = torch.tensor([math.log(8) + z, math.log(4) + z]).view(1, 2, 1, 1)
        assert_close(score, expected, "score")
        assert_close(s_v[0, :, 0, 0, 0], torch.tensor([3.5, 9.5]), "s_v (chunk means)")
        assert_close(s_k, torch.ones_like(s_k), "s_k")


def test_triton_fp16_inputs_float32_parameter():
    """float16 k, v with a float32 q_pool (as under autocast): outputs and dk, dv in
    float16, dq_pool in float32, all against the float32 reference."""
    k, v, q_pool = make_inputs(2, 90, 2, 32, 32, 4, dtype=torch.float16)
    out, grads = run_and_grad(lambda *a: chunk_compress(*a, backend="triton"), k, v, q_pool, 40)
    k32, v32 = (x.detach().float().requires_grad_() for x in (k, v))
    q32 = q_pool.detach().requires_grad_()
    ref, ref_grads = run_and_grad(chunk_compress_ref, k32, v32, q32, 40)
    assert [x.dtype for x in out] == [torch.float16, torch.float16, torch.float32]
    assert [g.dtype for g in grads.values()] == [torch.float16, torch.float16, torch.float32]
    for name, a, e in zip(("s_k", "s_v", "score"), out, ref):
        assert_close(a, e.to(a.dtype), name, dtype=torch.float16)
    for name in grads:
        assert_close(grads[name], ref_grads[name].to(grads[name].dtype), f"grad {name}",
                     dtype=torch.float16)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_float64_q_pool_is_used_in_float32(backend):
    """A float64 q_pool (any float dtype is documented) gives the float32 q_pool's results,
    and its gradient comes back in float64."""
    k, v, q_pool = make_inputs(2, 37, 2, 16, 8, 3)
    q64 = q_pool.detach().double().requires_grad_()
    out, grads = run_and_grad(lambda *a: chunk_compress(*a, backend=backend), k, v, q64, 8)
    ref, ref_grads = run_and_grad(chunk_compress_ref, k, v, q_pool, 8)
    assert [x.dtype for x in out] == [torch.float32] * 3
    assert grads["q_pool"].dtype == torch.float64
    for name, a, e in zip(("s_k", "s_v", "score"), out, ref):
        assert_close(a, e, name)
    for name in grads:
        assert_close(grads[name].float(), ref_grads[name], f"grad {name}")


@pytest.mark.gpu
@COMPILED
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_triton_half_on_gpu(dtype):
    B, T, H, D, P, C = 2, 4000, 4, 64, 4, 256
    k, v, q_pool = make_inputs(B, T, H, D, D, P, dtype=dtype)
    k, v, q_pool = (x.detach().cuda().requires_grad_() for x in (k, v, q_pool))
    out, grads = run_and_grad(lambda *a: chunk_compress(*a, backend="triton"), k, v, q_pool, C)
    k32, v32 = (x.detach().float().requires_grad_() for x in (k, v))
    q32 = q_pool.detach().requires_grad_()
    ref, ref_grads = run_and_grad(chunk_compress_ref, k32, v32, q32, C)
    assert out[0].dtype == dtype and out[2].dtype == torch.float32
    for name, a, e in zip(("s_k", "s_v", "score"), out, ref):
        assert_close(a, e.to(a.dtype), name, dtype=dtype)
    for name in grads:
        assert_close(grads[name], ref_grads[name].to(grads[name].dtype), f"grad {name}",
                     dtype=dtype)


@pytest.mark.gpu
@COMPILED
def test_triton_fp32_benchmark_shape_on_gpu():
    """The benchmark's layout (C=256, P=4, Dh=64) at a smaller T, fp32 exact products."""
    shape = (2, 8192 + 100, 8, 64, 64, 4)
    B, T, H, Dk, Dv, P = shape
    k, v, q_pool = (x.detach().cuda().requires_grad_() for x in make_inputs(*shape))
    out, grads = run_and_grad(lambda *a: chunk_compress(*a, backend="triton"), k, v, q_pool, 256)
    ref, ref_grads = run_and_grad(chunk_compress_ref, k, v, q_pool, 256)
    for name, a, e in zip(("s_k", "s_v", "score"), out, ref):
        assert_close(a, e, name)
    for name in grads:
        assert_close(grads[name], ref_grads[name], f"grad {name}")


def _good():
    return dict(k=torch.randn(2, 8, 2, 16), v=torch.randn(2, 8, 2, 12),
                q_pool=torch.randn(2, 3, 16), chunk_size=4)


@pytest.mark.parametrize(
    "change,exc,pattern",
    [
        (lambda kw: kw.update(k=kw["k"][0]), ValueError, r"k: expected 4 dimensions"),
        (lambda kw: kw.update(v=kw["v"][:, :5]), ValueError, r"v: expected shape .*T=8"),
        (lambda kw: kw.update(v=kw["v"][:, :, :1]), ValueError, r"v: expected shape .*H=2"),
        (lambda kw: kw.update(q_pool=torch.randn(3, 3, 16)), ValueError,
         r"q_pool: expected shape \[H=2, P, Dk=16\]"),
        (lambda kw: kw.update(q_pool=torch.randn(2, 3, 12)), ValueError,
         r"q_pool: expected shape \[H=2, P=3, Dk=16\], got \[2, 3, 12\]"),
        (lambda kw: kw.update(v=kw["v"].half()), TypeError, r"v: expected the same dtype as k"),
        (lambda kw: kw.update(k=kw["k"].long()), TypeError, r"k: expected dtype"),
        (lambda kw: kw.update(q_pool=torch.randn(2, 3, 16, device="meta")), ValueError,
         r"q_pool: expected a tensor on cpu"),
        (lambda kw: kw.update(chunk_size=0), ValueError, r"chunk_size: expected a positive int"),
        (lambda kw: kw.update(chunk_size=4.0), ValueError, r"chunk_size: expected a positive"),
        (lambda kw: kw.update(chunk_size=True), ValueError,
         r"chunk_size: expected a positive int, got True"),
        (lambda kw: kw.update(scale=-1.0), ValueError, r"scale: .* positive number, got -1"),
        (lambda kw: kw.update(scale="1"), TypeError, r"scale: .* positive number, got str"),
        (lambda kw: kw.update(backend="cuda"), ValueError, r"backend: expected one of"),
        (lambda kw: kw.update(k=kw["k"][:, :0], v=kw["v"][:, :0]), ValueError,
         r"k: dimension 1 \(T\) is 0"),
    ],
    ids=["k-rank", "v-T", "v-H", "q-H", "q-Dk", "mixed-dtype", "int-dtype", "device",
         "C0", "C-float", "C-bool", "scale-neg", "scale-str", "backend", "T0"],
)
def test_bad_input_is_rejected(change, exc, pattern):
    kw = _good()
    change(kw)
    with pytest.raises(exc, match=pattern):
        chunk_compress(**kw)


def test_triton_rejects_too_wide_heads():
    k = torch.randn(1, 4, 1, 300)
    with pytest.raises(NotImplementedError, match=r"head widths up to 256"):
        chunk_compress(k, k, torch.randn(1, 1, 300), 4, backend="triton")
    s_k, _, _ = chunk_compress(k, k, torch.randn(1, 1, 300), 4, backend="torch")
    assert s_k.shape == (1, 1, 1, 1, 300)

"""Input factory for the selective-scan tests."""

import torch

ALL_OPTS = ("D", "z", "delta_bias", "softplus", "initial_state", "final_state")


def make_scan_inputs(B, T, E, N, G, dtype=torch.float32, opts=ALL_OPTS, n_states=None,
                     requires_grad=True):
    """Random inputs for selective_scan with the optional arguments named in `opts`.

    Returns a kwargs dict; tensor leaves require grad. A is in [-1.5, -0.5] and delta is
    moderate, so states neither vanish nor blow up over a few hundred steps.
    """
    n_states = B if n_states is None else n_states
    softplus = "softplus" in opts

    def leaf(x, dt=dtype):
        return x.to(dt).requires_grad_(requires_grad)

    kw = dict(
        u=leaf(torch.randn(B, T, E)),
        delta=leaf(torch.randn(B, T, E) * 0.5 if softplus else torch.rand(B, T, E) * 0.5),
        A=leaf(-0.5 - torch.rand(E, N), torch.float32),
        B=leaf(torch.randn(B, T, G, N)),
        C=leaf(torch.randn(B, T, G, N)),
        D=leaf(torch.randn(E), torch.float32) if "D" in opts else None,
        z=leaf(torch.randn(B, T, E)) if "z" in opts else None,
        delta_bias=leaf(torch.rand(E) * 0.1, torch.float32) if "delta_bias" in opts else None,
        delta_softplus=softplus,
        initial_state=(leaf(torch.randn(n_states, E, N), torch.float32)
                       if "initial_state" in opts else None),
        output_final_state="final_state" in opts,
    )
    return kw


def grad_leaves(kw):
    return {k: v for k, v in kw.items() if isinstance(v, torch.Tensor) and v.requires_grad}


def detached_fp32(kw):
    """A float32 copy of the inputs, fresh leaves, for an fp32 oracle of a bf16 run."""
    out = {}
    for k, v in kw.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            out[k] = v.detach().float().requires_grad_(v.requires_grad)
        else:
            out[k] = v
    return out


def run_and_grad(fn, kw, seed=1, **extra):
    """Call fn(**kw), then backprop a fixed random projection of y (and of the final state).

    Returns (y, final_state, {name: grad}).
    """
    y, h = fn(**kw, **extra)
    g = torch.Generator().manual_seed(seed)
    loss = (y.float() * torch.randn(y.shape, generator=g)).sum()
    if h is not None:
        loss = loss + (h * torch.randn(h.shape, generator=g)).sum()
    leaves = grad_leaves(kw)
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return y, h, dict(zip(leaves.keys(), grads))

"""LongTermMemory, its controllers and its place in the block.

Shapes and gradients, streaming in segments, the capacity bound over a 1M-token stream,
the [start, end) intervals, per-row controller decisions, the `none` switch, a planted
fact kept or lost by capacity, and config validation.
"""

import pytest
import torch
import torch.utils._pytree
from helpers import assert_close
from torch.utils._python_dispatch import TorchDispatchMode

from memmodel.config import MemoryConfig
from memmodel.controllers import (
    Action,
    ChunkDecision,
    FifoController,
    MemoryController,
    StoreAllController,
    build_controller,
    oldest,
)
from memmodel.kernels.chunk_compress import chunk_compress_ref
from memmodel.long_term_memory import OPEN, LongTermMemory
from memmodel.model import MemoryLM
from memmodel.state import LayerState

# C=4, P=2, r=2: level 0 fills after 2 chunks, so short inputs already merge and evict.
LTM = dict(d_model=16, n_layers=2, d_state=8, ltm_controller="fifo", ltm_heads=2,
           ltm_chunk_size=4, ltm_summaries=2, ltm_levels=3, ltm_capacity=[5, 3, 2],
           ltm_merge=2, backend="torch")


def qkv(B, T, H=2, Dh=8):
    return [torch.randn(B, T, H, Dh) for _ in range(3)]


def live_counts(bank, position, levels):
    """[B, levels]: the entries of a segment's Bank visible at a stream position, per level."""
    vis = (bank.start <= position) & (position < bank.end) & (bank.level >= 0)
    return torch.stack([(vis & (bank.level == lv)).sum(-1) for lv in range(levels)], -1)


def test_drop_in_shape_and_gradients():
    ltm = LongTermMemory.from_config(MemoryConfig(**LTM))
    x = torch.randn(2, 37, 16, requires_grad=True)
    y = ltm(x)
    assert y.shape == x.shape
    assert y[:, :4].abs().max() == 0, "nothing is in the bank before the first chunk ends"
    y.square().sum().backward()
    for name, p in ltm.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} gets no gradient"
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("lengths", [[5, 13, 1, 20, 22], [8, 4, 49], [61]],
                         ids=["ragged", "multiples-of-C", "one-call"])
def test_streaming_in_segments_equals_one_call(lengths):
    ltm = LongTermMemory.from_config(MemoryConfig(**LTM))
    x = torch.randn(2, 61, 16)
    ref_state = LayerState()
    full = ltm(x, ref_state)
    state, outs, p = LayerState(), [], 0
    for n in lengths:
        outs.append(ltm(x[:, p: p + n], state))
        p += n
    assert_close(torch.cat(outs, 1), full, "streamed output")
    a, b = state.ltm, ref_state.ltm
    assert torch.equal(a.level, b.level) and torch.equal(a.start, b.start)
    assert_close(a.k, b.k, "carried keys")
    assert_close(a.pending_v, b.pending_v, "pending values")
    assert a.position == b.position == 61 and a.pending_k.shape[1] == 61 % 4


def test_model_with_long_term_memory_streams_and_detaches():
    model = MemoryLM(MemoryConfig(**LTM, scan_chunk_size=16))
    assert all(layer.long_term_memory is not None for layer in model.layers)
    ids = torch.randint(0, 256, (2, 30))
    full = model(ids, labels=ids)
    full.loss.backward()
    assert model.layers[0].long_term_memory.q_pool.grad.abs().sum() > 0
    out = model(ids[:, :11])
    out = model(ids[:, 11:], state=out.state)
    assert_close(out.logits, full.logits[:, 11:], "streamed logits")
    assert out.state.layers[0].ltm.k.requires_grad
    out.state.detach()
    assert not any(layer.ltm.k.requires_grad or layer.ltm.pending_k.requires_grad
                   for layer in out.state.layers)


@pytest.mark.parametrize("controller", ["fifo", "importance", "store_all", "qlearning"])
def test_model_with_long_term_memory_is_causal(controller):
    """Within one call too: the tokens after t change no logit up to t (a greedy learned
    controller included; its features at a boundary see only the past)."""
    model = MemoryLM(MemoryConfig(**{**LTM, "ltm_controller": controller}))
    for layer in model.layers:
        if hasattr(layer.long_term_memory.controller, "eval"):  # qlearning: greedy
            layer.long_term_memory.controller.eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (3, 41), generator=g)
    with torch.no_grad():
        ref = model(ids).logits
        for t in (3, 4, 5, 17, 30):
            other = ids.clone()
            other[:, t + 1:] = torch.randint(0, 256, (3, 40 - t), generator=g)
            assert torch.equal(model(other).logits[:, : t + 1], ref[:, : t + 1]), t


def test_triton_backend_matches_torch():
    cfg = dict(LTM, ltm_capacity=[3, 2, 1], ltm_summaries=1, ltm_chunk_size=5)
    ltm_t = LongTermMemory.from_config(MemoryConfig(**cfg))
    ltm_g = LongTermMemory.from_config(MemoryConfig(**{**cfg, "backend": "triton"}))
    ltm_g.load_state_dict(ltm_t.state_dict())
    x = torch.randn(1, 23, 16)
    y_t, y_g = ltm_t(x), ltm_g(x)
    assert_close(y_g, y_t, "triton output", rtol=1e-4)
    y_t.sum().backward()
    y_g.sum().backward()
    for (name, a), b in zip(ltm_g.named_parameters(), ltm_t.parameters()):
        assert_close(a.grad, b.grad, f"triton grad {name}", rtol=1e-4)


def test_bank_stays_within_capacity_over_a_1m_token_stream():
    """1M tokens in 8K segments (tiny widths): at every chunk boundary of every segment,
    no level holds more than its capacity, and the carried state stays that small."""
    cap, C, seg = [8, 8, 8], 256, 8192
    ltm = LongTermMemory.from_config(MemoryConfig(d_model=4, ltm_controller="fifo", ltm_heads=1,
                                      ltm_chunk_size=C, ltm_summaries=1, ltm_levels=3,
                                      ltm_capacity=cap, ltm_merge=4, backend="torch"))
    state, pos, full_levels = LayerState(), 0, set()
    with torch.no_grad():
        while pos < 1_000_000:
            rec = ltm.remember(*qkv(1, seg, H=1, Dh=4), state)
            for boundary in range(pos + C - pos % C, pos + seg + 1, C):
                counts = live_counts(rec.bank, boundary, 3)[0]
                assert (counts <= torch.tensor(cap)).all(), (boundary, counts.tolist())
                full_levels |= {lv for lv in range(3) if counts[lv] == cap[lv]}
            pos += seg
            st = state.ltm
            assert st.k.shape[1] <= sum(cap) and st.pending_k.shape[1] < C
            assert st.position == pos
    assert full_levels == {0, 1, 2}, "the stream should fill (and evict from) every level"
    assert bool(st.live.all()) and st.k.shape[1] >= sum(cap) - 4


@pytest.mark.parametrize("cap,kept", [([8, 8, 32], True), ([8, 8, 8], False)],
                         ids=["capacity-suffices", "capacity-too-small"])
def test_planted_fact_is_retrieved_or_lost_by_capacity(cap, kept):
    """A distinct key at position 100 of a 100K-token stream (8K segments), hand-set
    projections: with fifo it is still retrieved at the end when levels of capacity
    [8, 8, 32] cover the ~390 chunks (8 + 4*8 + 16*32 chunks), and lost with [8, 8, 8]."""
    D = 4
    ltm = LongTermMemory.from_config(MemoryConfig(d_model=D, ltm_controller="fifo", ltm_heads=1,
                                      ltm_chunk_size=256, ltm_summaries=1, ltm_levels=3,
                                      ltm_capacity=cap, ltm_merge=4, backend="torch"))
    fact_dir = torch.tensor([1.0, 0.0, 0.0, 0.0])
    with torch.no_grad():
        w, b = ltm.in_proj.weight, ltm.in_proj.bias  # rows: q, k, v, gate
        w.zero_()
        b.zero_()
        b[0:D] = 8 * fact_dir  # every token asks for the fact's direction
        w[D: 2 * D] = torch.eye(D)  # k = x
        w[2 * D: 3 * D] = torch.eye(D)  # v = x
        b[3 * D:] = 30.0  # output gate open
        ltm.out_proj.weight.copy_(torch.eye(D))
        ltm.q_pool.copy_(4 * fact_dir.view(1, 1, D))  # pooling and merges favour the fact
        ltm.merge_q.copy_(4 * fact_dir.view(1, 1, 1, D).expand_as(ltm.merge_q))

    T, seg, state, seen = 100_000, 8192, LayerState(), []
    with torch.no_grad():
        for p in range(0, T, seg):
            x = torch.randn(1, min(seg, T - p), D)
            x[..., 0] = 0.0  # background tokens carry nothing along the fact's direction
            if p == 0:
                x[0, 100] = 10 * fact_dir
            y = ltm(x, state)
            seen.append(y[0, :, 0])
    seen = torch.cat(seen)
    assert seen[:256].abs().max() == 0, "invisible until its chunk ends"
    assert seen[256:20_000].min() > 9.9, "retrieved once its chunk is compressed"
    if kept:
        assert seen[-1] > 9.9
    else:
        assert seen[-1] == 0
        assert (seen > 9.9).sum() < T // 2, "the fact lives about 168 chunks, then is evicted"


def test_intervals_entry_invisible_before_its_chunk_ends_and_after_eviction():
    """One level holding one entry: the summary of chunk c is read exactly by the tokens
    of chunk c + 1, in one call and across a segment boundary."""
    C = 4
    ltm = LongTermMemory.from_config(MemoryConfig(d_model=16, ltm_controller="fifo", ltm_heads=1,
                                      ltm_chunk_size=C, ltm_summaries=1, ltm_levels=1,
                                      ltm_capacity=1, backend="torch"))
    q, k, v = qkv(2, 18, H=1, Dh=16)
    _, s_v, _ = chunk_compress_ref(k, v, ltm.q_pool.detach(), C)  # [B, 5, 1, 1, Dh]
    expected = torch.zeros_like(v)
    for c in range(4):
        expected[:, (c + 1) * C: (c + 2) * C] = s_v[:, c, :, 0][:, None]
    rec = ltm.remember(q, k, v)
    assert_close(rec.o, expected, "one entry per chunk, read by the next chunk only")
    assert rec.lse[:, :C].isinf().all() and rec.lse[:, C:].isfinite().all()
    assert rec.bank.start[0].tolist() == [4, 8, 12, 16]
    assert rec.bank.end[0].tolist() == [8, 12, 16, OPEN]

    state = LayerState()
    first = ltm.remember(q[:, :10], k[:, :10], v[:, :10], state)
    second = ltm.remember(q[:, 10:], k[:, 10:], v[:, 10:], state)
    assert_close(torch.cat([first.o, second.o], 1), expected, "across segments")
    # the entry carried in (made at 8) starts before the second segment's first token
    assert second.bank.start[0, 0] - second.bank.position == -2


class RowwiseController(MemoryController):
    """Row 0 stores every summary and skips every third chunk; row 1 compresses each chunk
    into one level-1 entry and skips every other chunk (so some chunks are read by no
    row); usage is tracked, and logged as the controller saw it."""

    needs_usage = True

    def init_state(self, batch_size):
        return {"usage_seen": []}

    def decide(self, features):
        B, P = features.score.shape
        action = torch.full((B, P), int(Action.STORE))
        action[1] = int(Action.COMPRESS)
        c = features.chunk_index  # the decision is for the tokens of chunk c + 1
        retrieve = torch.tensor([c % 3 != 2, c % 2 == 1])
        features.controller_state["usage_seen"].append(features.bank.usage.sum().item())
        return ChunkDecision(action, retrieve)

    def select(self, features):
        return oldest(features)


class LookingFifo(FifoController):
    """fifo's decisions, after reading every device field of the bank (as learned
    controllers do, under no_grad)."""

    def _look(self, bank):
        return bank.keys.sum() + bank.score.sum() + bank.usage.sum()

    def decide(self, features):
        self._look(features.bank)
        features.max_similarity.sum()
        return super().decide(features)

    def select(self, features):
        self._look(features.bank)
        return super().select(features)


def test_a_controller_reading_the_bank_leaves_values_and_gradients_alone():
    """Merges are pooled when the bank is read; a read under the controller's no_grad
    must neither change the values nor cut the gradients of the entries."""
    cfg = MemoryConfig(**LTM)
    torch.manual_seed(0)
    ltm = LongTermMemory.from_config(cfg)
    x = torch.randn(2, 45, 16)
    results = []
    for ctrl in (FifoController(), LookingFifo()):
        ltm.controller = ctrl
        ltm.zero_grad()
        xi = x.clone().requires_grad_()
        st = LayerState()
        y = torch.cat([ltm(xi[:, :21], st), ltm(xi[:, 21:], st)], 1)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        results.append([y, xi.grad, ltm.q_pool.grad, ltm.merge_q.grad, st.ltm.k])
    assert (st.ltm.level == 2).any(), "merges reached the top level"
    for name, a, b in zip(("y", "dx", "dq_pool", "dmerge_q", "bank keys"), *results):
        assert_close(b, a, name, rtol=1e-6)


class AskedFifo(FifoController):
    """fifo without its plan: `decide` is asked at every boundary."""

    plan = None


class AskedStoreAll(StoreAllController):
    """store_all without its plan."""

    plan = None


def count_decide_calls(ctrl):
    """Wrap ctrl.decide (on the instance) so that its calls are counted in ctrl.calls."""
    ctrl.calls, decide = [], ctrl.decide
    ctrl.decide = lambda features: ctrl.calls.append(features.position) or decide(features)
    return ctrl


def stream_with(ltm, ctrl, x, segments, st=None):
    """x [B, T, D] in segments under ctrl: the output, the gradients of x and q_pool, the
    carried state and the bank of a 4-token probe after each segment."""
    cfg = ltm.config
    ltm.controller = ctrl
    ltm.zero_grad()
    xi = x.clone().requires_grad_()
    st, ys, banks, t0 = LayerState(ltm=st), [], [], 0
    for T in segments:
        ys.append(ltm(xi[:, t0:t0 + T], st))
        torch.manual_seed(t0)  # the same probe of the bank in every run
        banks.append(ltm.remember(*qkv(x.shape[0], 4, cfg.ltm_heads, cfg.ltm_head_dim),
                                  LayerState(ltm=st.ltm)).bank)
        t0 += T
    y = torch.cat(ys, 1)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    return y, xi.grad, ltm.q_pool.grad, ltm.merge_q.grad, st.ltm, banks


def assert_same_runs(a, b):
    """Two `stream_with` results are bit-identical."""
    for name, u, w in zip(("y", "dx", "dq_pool", "dmerge_q"), a[:4], b[:4]):
        assert (u is None and w is None) or torch.equal(u, w), name  # no merge_q: one level
    for u, w in zip(a[5], b[5]):
        for name in ("level", "start", "end", "k", "v"):
            assert torch.equal(getattr(u, name), getattr(w, name)), name
    for name in ("k", "v", "level", "start", "score", "usage", "pending_k", "retrieve"):
        assert torch.equal(getattr(a[4], name), getattr(b[4], name)), name


@pytest.mark.parametrize("kw,segments,pair", [
    (dict(), (21, 24), (FifoController, AskedFifo)),
    (dict(ltm_levels=1, ltm_capacity=[3], ltm_merge=2), (9, 30, 6), (FifoController, AskedFifo)),
    (dict(ltm_levels=2, ltm_capacity=[7, 4], ltm_merge=3, ltm_summaries=3,
          ltm_chunk_size=5), (50, 3, 40), (FifoController, AskedFifo)),
    (dict(), (21, 24), (StoreAllController, AskedStoreAll)),
], ids=["3-levels", "1-level", "r3-P3", "store_all"])
def test_a_plan_equals_asking_decide_at_every_boundary(kw, segments, pair):
    """fifo's (and store_all's) plan, applied to a segment's boundaries without `decide`
    calls, gives the same outputs, gradients, segment banks and carried state, bit for
    bit, as asking `decide` at each boundary; merges reach every level."""
    cfg = MemoryConfig(**{**LTM, **kw})
    torch.manual_seed(0)
    ltm = LongTermMemory.from_config(cfg)
    x = torch.randn(3, sum(segments), 16)
    planned, asked = (count_decide_calls(cls()) for cls in pair)
    runs = [stream_with(ltm, ctrl, x, segments) for ctrl in (planned, asked)]
    C = cfg.ltm_chunk_size
    assert planned.calls == [] and set(range(C, sum(segments) + 1, C)) <= set(asked.calls)
    assert_same_runs(*runs)
    carried = runs[0][4]
    if pair[0] is FifoController:
        assert (carried.level == cfg.ltm_levels - 1).any(), "merges reached the top level"
    else:
        assert carried.live.all() and carried.level.shape[1] == sum(segments) // 4 * 2


def test_a_plan_applies_when_rows_differ():
    """A stream begun under another controller (rows' banks differ) continues under
    fifo's plan with the result of asking `decide` at every boundary."""
    cfg = MemoryConfig(**LTM)
    torch.manual_seed(0)
    ltm = LongTermMemory.from_config(cfg, controller=build_controller(name="importance"))
    st = LayerState()
    with torch.no_grad():
        ltm(torch.randn(3, 33, 16), st)
    assert not (st.ltm.start == st.ltm.start[:1]).all(), "rows differ"
    x = torch.randn(3, 30, 16)
    runs = [stream_with(ltm, ctrl, x, (13, 17), st.ltm) for ctrl in (FifoController(),
                                                                     AskedFifo())]
    assert_same_runs(*runs)


class NewestFifo(FifoController):
    """fifo's decisions, but a full level gives up its newest entries."""

    def select(self, features):
        bank = features.bank
        candidate = bank.live & (bank.level == features.level)
        key = torch.where(candidate, -bank.start, torch.iinfo(torch.int64).max)
        return torch.sort(key, dim=1, stable=True).indices[:, : features.count]


class RestatedFifo(NewestFifo):
    """NewestFifo stating fifo's plan again: its decide is still fifo's."""

    plan = FifoController.plan


def test_a_subclass_that_redefines_a_rule_loses_the_plan():
    """A fifo subclass that overrides select (or decide) has no plan, so `decide` is
    asked at every boundary and its own select is what runs; one that states the plan
    again keeps it, and its select still runs."""
    assert FifoController.plan is not None and StoreAllController.plan is not None
    assert NewestFifo.plan is None and LookingFifo.plan is None and AskedFifo.plan is None
    assert RestatedFifo.plan is FifoController.plan
    cfg = MemoryConfig(**{**LTM, "ltm_levels": 1, "ltm_capacity": [3]})
    torch.manual_seed(0)
    ltm = LongTermMemory.from_config(cfg)
    x = torch.randn(2, 30, 16)
    newest, restated = count_decide_calls(NewestFifo()), count_decide_calls(RestatedFifo())
    runs = [stream_with(ltm, ctrl, x, (30,)) for ctrl in (newest, restated, FifoController())]
    assert set(range(4, 31, 4)) <= set(newest.calls) and restated.calls == []
    assert_same_runs(runs[0], runs[1])
    assert not torch.equal(runs[0][4].start, runs[2][4].start), "newest first, not fifo"


class FloatKernels(TorchDispatchMode):
    """Counts the ops that write a new floating-point tensor (views excluded): the device
    work, as opposed to the host bookkeeping on int and bool tensors."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in
                  torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        self.count += any(isinstance(t, torch.Tensor) and t.dtype.is_floating_point
                          and t.untyped_storage().data_ptr() not in inputs
                          for t in torch.utils._pytree.tree_leaves(out))
        return out


def test_fifo_boundaries_launch_no_device_work():
    """Under fifo, merges are pooled once per segment, level by level: a segment of 16
    chunk boundaries does the same device work as one of 8 (both merge into every level)."""
    cfg = MemoryConfig(**{**LTM, "ltm_capacity": [4, 3, 2]})
    ltm = LongTermMemory.from_config(cfg)
    warm = LayerState()
    with torch.no_grad():
        ltm(torch.randn(2, 64, 16), warm)  # the bank is full: every boundary merges
        counts = []
        for T in (32, 64):
            with FloatKernels() as k:
                ltm(torch.randn(2, T, 16), LayerState(ltm=warm.ltm))
            counts.append(k.count)
    assert counts[1] <= counts[0] + 2, counts  # not ~10 more per extra boundary


def test_per_row_decisions_compress_skip_and_usage():
    cfg = MemoryConfig(**{**LTM, "ltm_capacity": [64, 64, 64]})
    ltm = LongTermMemory.from_config(cfg, controller=RowwiseController())
    fifo = LongTermMemory.from_config(cfg, controller=FifoController())
    fifo.load_state_dict(ltm.state_dict())
    q, k, v = qkv(2, 26)
    state = LayerState()
    rec = ltm.remember(q, k, v, state)
    chunk = torch.arange(26) // 4
    reads0 = (chunk - 1) % 3 != 2
    reads1 = ((chunk - 1) % 2 == 1) & (chunk >= 1)
    assert not (reads0 | reads1)[12:16].any(), "chunk 3 is read by no row"
    alone = fifo.remember(q[:1], k[:1], v[:1])
    assert_close(rec.o[0], alone.o[0] * reads0[:, None, None],
                 "row 0 reads as fifo does where it reads, whatever row 1 decides")
    levels = rec.bank.level[1][rec.bank.level[1] >= 0]
    assert (levels == 1).all() and len(levels) == 26 // 4, "one level-1 entry per chunk"
    s_k, s_v, _ = chunk_compress_ref(k[1:, :24], v[1:, :24], ltm.q_pool.detach(), 4)
    m_k, _, _ = chunk_compress_ref(s_k[0].transpose(1, 2), s_v[0].transpose(1, 2),
                                   ltm.merge_q[0].detach(), 2)  # each chunk's P=2 pooled
    assert_close(rec.bank.k[1][rec.bank.level[1] == 1], m_k[:, 0, :, 0], "compressed chunks")
    o1 = rec.o[1].abs().sum((-1, -2))
    assert (o1[reads1] > 0).all() and (o1[~reads1] == 0).all()
    # usage: every reading token spreads mass 1 (mean over heads) over the entries
    n_reading = rec.lse.isfinite().float().mean(-1).sum(1)
    assert_close(state.ltm.usage.sum(1), n_reading, "usage = tokens that read")
    seen = state.ltm.controller["usage_seen"]
    assert seen and max(seen) == 0, "within the first segment, usage is not yet known"
    ltm.remember(*qkv(2, 4), state)
    assert seen[-1] == pytest.approx(n_reading.sum().item(), rel=1e-5), \
        "the next segment's decisions see the previous segment's usage"


def test_compress_pools_each_rows_selected_summaries():
    ltm = LongTermMemory.from_config(
        MemoryConfig(**{**LTM, "ltm_summaries": 3, "ltm_capacity": [4, 3, 2]}))
    new_k, new_v = torch.randn(3, 3, 2, 8), torch.randn(3, 3, 2, 8)
    selected = torch.tensor([[True, False, True], [True, True, True], [False] * 3])
    k1, v1, score = ltm._merge_selected(new_k, new_v, selected)
    merge_q = ltm.merge_q[0].detach()
    for b in range(2):
        idx = selected[b].nonzero()[:, 0]
        e_k, e_v, e_s = chunk_compress_ref(new_k[b:b + 1, idx], new_v[b:b + 1, idx], merge_q,
                                           len(idx))
        assert_close(k1[b], e_k[0, :, :, 0], f"row {b} keys")
        assert_close(v1[b], e_v[0, :, :, 0], f"row {b} values")
        assert_close(score[b], e_s[0, :, :, 0].mean(-1), f"row {b} score")
    assert k1[2].abs().max() == 0 and score[2] == 0


class CompressSome(FifoController):
    """COMPRESS every summary of rows 0 and 2, and in row 1 the first summary only of odd
    chunks (else all); evict and merge the oldest."""

    def decide(self, features):
        B, P = features.score.shape
        action = torch.full((B, P), int(Action.COMPRESS))
        if features.chunk_index % 2:
            action[1, 1:] = int(Action.DISCARD)
        return ChunkDecision(action=action, retrieve=torch.ones(B, dtype=torch.bool))


@pytest.mark.parametrize("all_rows", [True, False], ids=["all-compress-whole", "mixed"])
def test_whole_chunks_pooled_once_per_segment_equal_pooling_each_boundary(all_rows,
                                                                          monkeypatch):
    """A chunk whose summaries are all compressed is pooled, with every other such chunk of
    the segment, in one call (`_WholeChunks`); the outputs, the carried bank and the merge
    query's gradient are those of pooling it at its boundary (`_merge_selected`)."""
    torch.manual_seed(0)
    ltm = LongTermMemory.from_config(MemoryConfig(**LTM), controller=(
        CompressSome() if not all_rows else type("CompressAll", (FifoController,), {
            "decide": lambda self, f: ChunkDecision(
                action=torch.full(tuple(f.score.shape), int(Action.COMPRESS)),
                retrieve=torch.ones(f.score.shape[0], dtype=torch.bool))})()))
    x = qkv(3, 37)
    runs = []
    apply = LongTermMemory._apply_decision
    for whole in (True, False):
        if not whole:  # the boundary's own pooling, always
            monkeypatch.setattr(LongTermMemory, "_apply_decision",
                                lambda self, *a: apply(self, *a[:8]))
        ltm.zero_grad()
        state = LayerState()
        out = [ltm.remember(*(t[:, a:b] for t in x), state).o for a, b in ((0, 21), (21, 37))]
        torch.cat(out, 1).square().sum().backward()
        runs.append((out, state.ltm, ltm.merge_q.grad.clone()))
    (out_w, st_w, g_w), (out_b, st_b, g_b) = runs
    assert (st_w.level == 1).any()
    for a, b in zip(out_w, out_b):
        assert_close(a, b, "outputs")
    for name in ("k", "v", "score"):
        assert_close(getattr(st_w, name), getattr(st_b, name), name)
    assert torch.equal(st_w.level, st_b.level) and torch.equal(st_w.start, st_b.start)
    assert g_w.abs().sum() > 0
    assert_close(g_w, g_b, "merge_q gradient")


class BadSelect(FifoController):
    def select(self, features):
        return torch.zeros(features.rows.shape[0], features.count, dtype=torch.int64)


def test_bad_controller_answers_and_inputs_raise():
    ltm = LongTermMemory.from_config(MemoryConfig(**LTM), controller=BadSelect())
    with pytest.raises(ValueError, match=r"select: expected 2 distinct live entries of level"):
        ltm(torch.randn(1, 40, 16))
    ltm.controller = FifoController()
    q, _, v = qkv(1, 9)
    with pytest.raises(ValueError, match=r"k: expected shape \[B=1, T=9, H=2, Dh=8\]"):
        ltm.remember(q, torch.randn(1, 9, 4, 4), v)
    with pytest.raises(ValueError, match=r"state.ltm: expected a state of batch size 1"):
        ltm.remember(q, q, v, LayerState(ltm=ltm.initial_state(2)))


def test_none_adds_nothing():
    base = dict(d_model=16, n_layers=2, d_state=8, backend="torch")
    torch.manual_seed(1)
    plain = MemoryLM(MemoryConfig(**base))
    torch.manual_seed(1)
    off = MemoryLM(MemoryConfig(**base, ltm_controller="none", ltm_heads=3))
    assert all(layer.long_term_memory is None for layer in off.layers)
    assert [n for n, _ in off.named_parameters()] == [n for n, _ in plain.named_parameters()]
    ids = torch.randint(0, 256, (2, 40))
    out = off(ids)
    assert torch.equal(out.logits, plain(ids).logits)
    assert all(layer.ltm is None for layer in out.state.layers)

    ltm, state = LongTermMemory.from_config(MemoryConfig(**LTM)), LayerState()
    ltm.controller = build_controller(name="none")
    assert ltm(torch.randn(2, 9, 16), state).abs().max() == 0 and state.ltm is None
    with pytest.raises(ValueError, match="ltm_controller is 'none'"):
        LongTermMemory.from_config(MemoryConfig(**base))


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(ltm_controller="lru"),
         r"ltm_controller: expected one of \['fifo', 'gumbel', 'importance', 'none', 'qlearning', "
         r"'store_all'\]"),
        (dict(ltm_heads=3), r"ltm_heads: expected a divisor of d_model=16"),
        (dict(ltm_head_dim=0), r"ltm_head_dim: expected a positive int or None"),
        (dict(ltm_chunk_size=0), r"ltm_chunk_size: expected a positive int"),
        (dict(ltm_merge=1), r"ltm_merge: expected an int >= 2"),
        (dict(ltm_capacity=[8, 8]), r"ltm_capacity: expected .* a list of ltm_levels=3"),
        (dict(ltm_capacity=[2, 8, 8]), r"level 0 needs at least 3 entries"),
        (dict(ltm_capacity=[8, 1, 8]), r"level 1 needs at least 2 entries"),
        (dict(ltm_levels=1, ltm_capacity=1), r"level 0 needs at least 2 entries"),
    ],
    ids=["controller", "heads", "head-dim", "chunk", "merge", "levels", "cap0", "cap1",
         "one-level"],
)
def test_config_rejects_bad_long_term_memory_settings(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        MemoryConfig(**{**LTM, **kwargs})


def test_module_moves_with_to():
    """`to()` reaches the module's parameters (no method of the module shadows
    nn.Module's own)."""
    ltm = LongTermMemory.from_config(MemoryConfig(**LTM)).to(torch.float64)
    assert ltm.q_pool.dtype == torch.float64 and ltm.in_proj.weight.dtype == torch.float64

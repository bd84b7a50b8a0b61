"""MemoryLM: token embedding, residual SSM blocks, final norm, tied output head.

    h = embed(input_ids)
    for each block:  h = h + mixer(RMSNorm(h))
    logits = head(RMSNorm(h))

The forward takes and returns a MemoryState, so a long stream can be fed segment by
segment with the same result as one call.
"""

from __future__ import annotations

import copy
import json
import math
import os
from typing import Any, NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import atomic_write
from .config import MemoryConfig
from .long_term_memory import LongTermMemory
from .ssm import SelectiveSSM, place
from .state import LayerState, MemoryState
from .working_memory import WorkingMemory

IGNORE_INDEX = -100  # labels that are not scored
PRETRAINED_VERSION = 1  # of save_pretrained's folder layout


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _sample(logits: torch.Tensor, temperature: float, top_k: Optional[int],
            generator: Optional[torch.Generator]) -> torch.Tensor:
    """[B] token ids from logits [B, V]: the argmax at temperature 0, else a draw from
    softmax(logits / temperature) over the top_k most likely."""
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, -1)
    return torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0].to(logits.device)


def _is_controller_key(key: str) -> bool:
    """A state_dict key of a memory controller's own parameters (a learned policy)."""
    return ".long_term_memory.controller." in key


def _check_shape(name: str, t: Optional[torch.Tensor], shape):
    if t is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected a state of shape {list(shape)}, got "
                         f"{list(t.shape)} (made by another config or batch size)")


def _mark(layer_state: LayerState):
    """What a failed forward must restore in a layer's state beyond its fields: the
    controller's per-stream record (it grows in place), when it can be marked."""
    record = None if layer_state.ltm is None else layer_state.ltm.controller
    return (record, record.mark()) if hasattr(record, "mark") else None


def _rollback(layer_state: LayerState, mark):
    if mark is not None:
        record, point = mark
        record.rollback(point)


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension, computed in float32.

    Args:
        dim: width of the last dimension.
        eps: added to the mean square.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def reset_parameters(self):
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


class Block(nn.Module):
    """Pre-norm residual block, a drop-in `(B, T, D) -> (B, T, D)` layer:
    x + mixer(norm(x)) [+ working_memory(norm(x))] [+ long_term_memory(norm(x))].

    Args:
        d_model: model width D.
        device, dtype: where and in which dtype the weights are made.
        **options: any size or switch of `MemoryConfig` (d_state, expand, d_conv, wm_slots,
            wm_heads, ltm_controller, ltm_chunk_size, ltm_capacity, backend, ...; checked
            as there). The working memory is there when wm_slots > 0, the long-term memory
            when ltm_controller != "none".

    `Block.from_config(config)` builds one from a model's config.

    Example:
        >>> block = Block(64, wm_slots=8, ltm_controller="fifo", ltm_chunk_size=32)
        >>> state = LayerState()
        >>> block(torch.randn(2, 100, 64), state).shape
        torch.Size([2, 100, 64])
        >>> block.step(torch.randn(2, 64), state).shape
        torch.Size([2, 64])
    """

    def __init__(self, d_model: int, device=None, dtype=None, **options):
        super().__init__()
        self.config = config = MemoryConfig(d_model=d_model, **options)
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.mixer = SelectiveSSM.from_config(config)
        self.working_memory = WorkingMemory.from_config(config) if config.wm_slots else None
        self.long_term_memory = (LongTermMemory.from_config(config)
                                 if config.ltm_controller != "none" else None)
        place(self, device, dtype, keep_float32=("A_log", "D", "dt_bias"))

    @classmethod
    def from_config(cls, config: MemoryConfig, device=None, dtype=None) -> Block:
        options = {k: v for k, v in config.to_dict().items() if k != "d_model"}
        return cls(config.d_model, device=device, dtype=dtype, **options)

    def branches(self) -> dict[str, nn.Module]:
        """The parts whose outputs are added to the residual stream, by attribute name
        ("mixer", then "working_memory" and "long_term_memory" where present); each ends in
        a linear `out_proj` ([D, *] weight) that writes its output into the stream.

        Example:
            >>> list(Block(32, wm_slots=4).branches())
            ['mixer', 'working_memory']
        """
        parts = {"mixer": self.mixer, "working_memory": self.working_memory,
                 "long_term_memory": self.long_term_memory}
        return {name: part for name, part in parts.items() if part is not None}

    def forward(self, x: torch.Tensor, state: Optional[LayerState] = None) -> torch.Tensor:
        """x: [B, T, D] -> [B, T, D]; with a LayerState, continues the stream it holds."""
        h = self.norm(x)
        y = self.mixer(h, state)
        if self.working_memory is not None:
            y = y + self.working_memory(h, state)
        if self.long_term_memory is not None:
            y = y + self.long_term_memory(h, state)
        return x + y

    def step(self, x: torch.Tensor, state: LayerState, inplace: bool = False) -> torch.Tensor:
        """One token per row: x [B, D] -> [B, D] through each part's `step` (the decode
        kernels); equal to the last position of `forward` over the same tokens.
        `inplace`: the SSM state is updated in place (see `SelectiveSSM.step`)."""
        h = self.norm(x)
        y = self.mixer.step(h, state, inplace=inplace)
        if self.working_memory is not None:
            y = y + self.working_memory.step(h, state)
        if self.long_term_memory is not None:
            y = y + self.long_term_memory.step(h, state)
        return x + y


class LMOutput(NamedTuple):
    """logits: [B, T, vocab]; loss: scalar or None; state: the MemoryState after the input."""

    logits: torch.Tensor
    loss: Optional[torch.Tensor]
    state: MemoryState


class GenerateOutput(NamedTuple):
    """sequences: [B, T + new] the prompt and its continuation; state: the MemoryState
    after all of them; logits: [B, vocab] for the token that would follow."""

    sequences: torch.Tensor
    state: MemoryState
    logits: torch.Tensor


class MemoryLM(nn.Module):
    """Language model over the blocks.

    Args:
        config: MemoryConfig.

    Example:
        >>> model = MemoryLM(MemoryConfig(d_model=64, n_layers=2))
        >>> ids = torch.randint(0, 256, (2, 32))
        >>> out = model(ids[:, :16], labels=ids[:, 1:17])
        >>> out = model(ids[:, 16:], state=out.state)   # continue the same stream
    """

    def __init__(self, config: MemoryConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList([Block.from_config(config.layer_config(i))
                                     for i in range(config.n_layers)])
        self.norm_f = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embedding.weight
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        nn.init.normal_(self.embedding.weight, std=0.02)
        if not self.config.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, std=0.02)
        for layer in self.layers:
            layer.norm.reset_parameters()
            layer.mixer.reset_parameters()
            # Keep the residual stream's variance independent of depth (GPT-2, Mamba).
            layer.mixer.out_proj.weight /= math.sqrt(self.config.n_layers)
            if layer.working_memory is not None:
                layer.working_memory.reset_parameters()
            if layer.long_term_memory is not None:
                layer.long_term_memory.reset_parameters()
        self.norm_f.reset_parameters()

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: Optional[torch.Tensor] = None,
        state: Optional[MemoryState] = None,
    ) -> LMOutput:
        """Run the model on a segment.

        Args:
            input_ids: [B, T] int64 (or int32) token ids in [0, vocab_size).
            labels: [B, T] int64 (or int32), the target of each position (already shifted:
                labels[t] is the token after input_ids[t]), in [0, vocab_size) or -100
                (ignored). Optional.
            state: the MemoryState returned by the previous segment of the same streams,
                or None to start fresh. It is updated in place and returned; a call that
                raises leaves it as it was.

        Returns:
            LMOutput(logits [B, T, vocab], loss or None, state). The loss is the mean
            cross-entropy over the positions whose label is not -100; when every label is
            -100 it is 0 (with zero gradients).

        Raises:
            TypeError: input_ids or labels not an integer tensor.
            ValueError: a shape, a token id or a label out of range, or a state that another
                model, another batch size or another config made.
        """
        self._check_ids("input_ids", input_ids)
        B, T = input_ids.shape
        if labels is not None:
            self._check_ids("labels", labels, shape=(B, T), ignore=IGNORE_INDEX)
        state, logits = self._advance(input_ids, state, lambda layer, h, ls: layer(h, ls))
        loss = None
        if labels is not None:
            total = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten().long(),
                                    ignore_index=IGNORE_INDEX, reduction="sum")
            loss = total / (labels != IGNORE_INDEX).sum().clamp_min(1)
        return LMOutput(logits, loss, state)

    def step(self, input_ids: torch.Tensor, state: Optional[MemoryState] = None,
             inplace: bool = False) -> LMOutput:
        """One token per row through every layer's `step` (the decode kernels).

        Args:
            input_ids: [B] (or [B, 1]) int64 token ids, the tokens after `state`.
            state: the MemoryState to continue (None: a fresh stream); updated in place
                and returned. A step that raises leaves it as it was, unless `inplace`.
            inplace: update the SSM states in place, with no copy (as an inference cache
                from `allocate_inference_cache`, which `generate` uses).

        Returns:
            LMOutput(logits [B, vocab], None, state); the logits equal the last position of
            `forward` over the same tokens.
        """
        if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 1:
            input_ids = input_ids[:, None]
        self._check_ids("input_ids", input_ids)
        if input_ids.shape[1] != 1:
            raise ValueError(f"input_ids: expected one token per row ([B] or [B, 1]), got "
                             f"{tuple(input_ids.shape)}")
        state, logits = self._advance(
            input_ids, state,
            lambda layer, h, ls: layer.step(h[:, 0], ls, inplace=inplace)[:, None])
        return LMOutput(logits[:, 0], None, state)

    def allocate_inference_cache(self, batch_size: int, device=None) -> MemoryState:
        """A MemoryState for `batch_size` fresh streams with every fixed-size tensor made
        once (conv and SSM states zero, the working memory's learned slots), for `step`
        with `inplace=True`. The long-term memory's bank grows up to its capacity."""
        if not _is_count(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        c = self.config
        device = device if device is not None else self.embedding.weight.device
        state = MemoryState.empty(len(self.layers))
        for layer, ls in zip(self.layers, state.layers):
            if c.d_conv > 1:
                ls.conv = torch.zeros(batch_size, c.d_inner, c.d_conv - 1, device=device,
                                      dtype=layer.mixer.in_proj.weight.dtype)
            ls.ssm = torch.zeros(batch_size, c.d_inner, c.d_state, device=device)
            if layer.working_memory is not None:
                ls.wm = tuple(t.contiguous() for t in
                              layer.working_memory.initial_slots(batch_size))
        return state

    def _advance(self, input_ids, state, run, head=None):
        """(state, logits [B, T, vocab]): `run(layer, h, layer_state)` over the layers on
        copies of the layer states; the caller's state changes only once every layer has
        succeeded, and the controllers' per-stream records are rolled back when one
        fails. `head` replaces lm_head on the final norm's output (MemoryClassifier: the
        identity, so the result is the normed hidden states [B, T, D])."""
        B, T = input_ids.shape
        if state is None:
            state = MemoryState.empty(len(self.layers))
        self._check_state(state, B)
        work = [copy.copy(layer_state) for layer_state in state.layers]
        marks = [_mark(layer_state) for layer_state in state.layers]
        try:
            h = self.embedding(input_ids)
            for layer, layer_state in zip(self.layers, work):
                h = run(layer, h, layer_state)
            logits = (self.lm_head if head is None else head)(self.norm_f(h))
        except BaseException:
            for layer_state, mark in zip(state.layers, marks):
                _rollback(layer_state, mark)
            raise
        for layer_state, done in zip(state.layers, work):
            layer_state.__dict__.update(done.__dict__)
        state.position += T
        if state.signature is None:
            state.signature = dict(self.state_signature(), batch_size=B)
        return state, logits

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int,
                 temperature: float = 1.0, top_k: Optional[int] = None,
                 state: Optional[MemoryState] = None,
                 generator: Optional[torch.Generator] = None,
                 prefill_segment: int = 4096) -> GenerateOutput:
        """Continue each row of `input_ids` by `max_new_tokens` sampled tokens.

        The prompt is read in segments of `prefill_segment` tokens with the state carried
        (a long prompt never holds full-length logits), then one token at a time through
        `step` (the decode kernels, the SSM states updated in place); the
        long-term memory compresses and stores at chunk boundaries as it goes, exactly as
        in a forward over the same tokens. Runs in the model's current mode (call
        `eval()` first for greedy controllers).

        Args:
            input_ids: [B, T] int64 prompt (T >= 1), continuing `state` when given.
            max_new_tokens: tokens to add (>= 0).
            temperature: > 0 divides the logits before sampling; 0 takes the argmax.
            top_k: sample among the k most likely tokens only (None: all).
            state: a MemoryState to continue (None: a fresh stream); updated in place.
            generator: draws the samples (None: torch's global generator).
            prefill_segment: tokens per forward call while reading the prompt.

        Returns:
            GenerateOutput(sequences [B, T + max_new_tokens], the state after all of
            them, logits [B, vocab] for the token that would follow).

        Example:
            >>> out = model.generate(torch.tensor([[104, 105]]), 8, temperature=0)
            >>> out.sequences.shape
            torch.Size([1, 10])
        """
        if not _is_count(max_new_tokens):
            raise ValueError(f"max_new_tokens: expected an int >= 0, got {max_new_tokens!r}")
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) \
                or not math.isfinite(temperature) or temperature < 0:
            raise ValueError(f"temperature: expected a finite number >= 0, got "
                             f"{temperature!r}")
        V = self.config.vocab_size
        if top_k is not None and (not _is_count(top_k) or not 1 <= top_k <= V):
            raise ValueError(f"top_k: expected None or an int in [1, {V}], got {top_k!r}")
        if not _is_count(prefill_segment) or prefill_segment < 1:
            raise ValueError(f"prefill_segment: expected a positive int, got "
                             f"{prefill_segment!r}")
        self._check_ids("input_ids", input_ids)
        out = None
        for t0 in range(0, input_ids.shape[1], prefill_segment):
            out = self(input_ids[:, t0:t0 + prefill_segment], state=state)
            state = out.state
        logits, pieces = out.logits[:, -1], [input_ids]
        for _ in range(max_new_tokens):
            nxt = _sample(logits, temperature, top_k, generator).to(input_ids.dtype)
            pieces.append(nxt[:, None])
            out = self.step(nxt, state=state, inplace=True)
            state, logits = out.state, out.logits
        return GenerateOutput(torch.cat(pieces, 1), state, logits)

    def save_pretrained(self, path) -> None:
        """Write the model to the folder `path` (made if missing): `config.json` (the
        MemoryConfig as plain JSON), `model.safetensors` (the weights; a tied head is
        stored once) and, for learned controllers (qlearning, gumbel),
        `controller-<i>.safetensors` with their greedy policy (plain parts in
        config.json). Loadable without pickle by `from_pretrained`. Each file is written to
        a temporary name and renamed."""
        from safetensors.torch import save as safetensors_bytes

        os.makedirs(path, exist_ok=True)
        weights = {k: t.detach().contiguous() for k, t in self.state_dict().items()
                   if not _is_controller_key(k)}  # controllers: files of their own
        if self.config.tie_embeddings:
            weights.pop("lm_head.weight")
        meta = {"format": "memmodel", "version": PRETRAINED_VERSION,
                "config": self.config.to_dict(), "controllers": []}
        tensor_files = {"model.safetensors": weights}
        distinct, layer_of = [], []
        for layer in self.layers:
            ctrl = None if layer.long_term_memory is None else layer.long_term_memory.controller
            known = [i for i, c in enumerate(distinct) if c is ctrl]
            if not known:
                distinct.append(ctrl)
            layer_of.append(known[0] if known else len(distinct) - 1)
        for i, ctrl in enumerate(distinct):
            entry = {"name": None if ctrl is None else ctrl.name,
                     "layers": [j for j, k in enumerate(layer_of) if k == i]}
            if hasattr(ctrl, "policy_state"):
                entry["policy"], tensors = ctrl.policy_state()
                entry["file"] = f"controller-{i}.safetensors"
                tensor_files[entry["file"]] = tensors
            meta["controllers"].append(entry)
        for name, tensors in tensor_files.items():
            data = safetensors_bytes(tensors)
            atomic_write(os.path.join(path, name), lambda f, data=data: f.write(data))
        text = json.dumps(meta, indent=2).encode("utf-8")
        atomic_write(os.path.join(path, "config.json"), lambda f: f.write(text))

    @classmethod
    def from_pretrained(cls, path, device=None) -> MemoryLM:
        """A model written by `save_pretrained`, in eval mode (greedy controllers).

        Raises:
            FileNotFoundError: a file of the folder is missing.
            ValueError: a config.json that is not a memmodel model's, or weights that do
                not fit its config (names or shapes).
        """
        from safetensors.torch import load_file

        from .config import QLearningConfig
        from .controllers import QLearningController, build_controller

        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            meta = json.load(f)
        if not isinstance(meta, dict) or meta.get("format") != "memmodel":
            raise ValueError(f"from_pretrained: {path}/config.json is not a memmodel model's "
                             f"config (no \"format\": \"memmodel\")")
        if meta.get("version") != PRETRAINED_VERSION:
            raise ValueError(f"from_pretrained: {path}: expected version {PRETRAINED_VERSION}, "
                             f"got {meta.get('version')!r}")
        model = cls(MemoryConfig(**meta["config"]))
        weights = load_file(os.path.join(path, "model.safetensors"))
        missing, unexpected = model.load_state_dict(weights, strict=False)
        tied = {"lm_head.weight"} if model.config.tie_embeddings else set()
        missing = [k for k in missing if k not in tied and not _is_controller_key(k)]
        if missing or unexpected:
            raise ValueError(f"from_pretrained: {path}/model.safetensors does not fit its "
                             f"config: missing {sorted(missing)}, unexpected "
                             f"{sorted(unexpected)}")
        for entry in meta["controllers"]:
            if entry["name"] is None:
                continue
            if "policy" in entry and entry["name"] == "qlearning":
                ctrl = QLearningController(model.config,
                                           QLearningConfig.from_dict(entry["policy"]["rl"]))
            else:
                ctrl = build_controller(model.config, entry["name"])
            if "policy" in entry:
                ctrl.load_policy_state(entry["policy"],
                                       load_file(os.path.join(path, entry["file"])))
            for j in entry["layers"]:
                model.layers[j].long_term_memory.controller = ctrl
        if device is not None:
            model.to(device)
        return model.eval()

    def state_signature(self) -> dict[str, Any]:
        """The sizes that shape this model's MemoryState (a state records them)."""
        c = self.config
        sig = {name: getattr(c, name) for name in ("n_layers", "d_model", "d_state", "d_conv",
                                                   "wm_slots")}
        sig["d_inner"] = c.d_inner
        if c.wm_slots:
            sig.update(wm_heads=c.wm_heads, wm_head_dim=c.wm_head_dim)
        sig["long_term_memory"] = c.ltm_controller != "none"
        if c.wm_slots or sig["long_term_memory"]:
            sig["memory_layers"] = copy.copy(c.memory_layers)
        if sig["long_term_memory"]:
            for name in ("ltm_heads", "ltm_head_dim", "ltm_chunk_size", "ltm_summaries",
                         "ltm_levels", "ltm_capacity", "ltm_merge"):
                sig[name] = copy.copy(getattr(c, name))
        return sig

    def _check_ids(self, name: str, ids, shape=None, ignore=None):
        """Token ids or labels: an integer [B, T] tensor (of `shape`) in [0, vocab_size),
        or equal to `ignore`."""
        if not isinstance(ids, torch.Tensor):
            raise TypeError(f"{name}: expected a [B, T] integer tensor, got "
                            f"{type(ids).__name__}")
        if ids.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{name}: expected int64 (or int32) token ids, got {ids.dtype}")
        if shape is None:
            if ids.dim() != 2:
                raise ValueError(f"{name}: expected a [B, T] tensor, got {tuple(ids.shape)}")
            if ids.shape[0] == 0 or ids.shape[1] == 0:
                raise ValueError(f"{name}: expected at least one row and one token, got "
                                 f"B={ids.shape[0]}, T={ids.shape[1]}")
        elif tuple(ids.shape) != tuple(shape):
            raise ValueError(f"{name}: expected shape {tuple(shape)} like input_ids, got "
                             f"{tuple(ids.shape)}")
        V = self.config.vocab_size
        # ignored labels read as 0; one reduction and one host sync, no boolean indexing
        valid = ids if ignore is None else torch.where(ids == ignore, 0, ids)
        if valid.numel():
            lo, hi = torch.stack(torch.aminmax(valid)).tolist()
            if lo < 0 or hi >= V:
                bad = lo if lo < 0 else hi
                allowed = f"[0, {V})" + ("" if ignore is None else f" or {ignore}")
                raise ValueError(f"{name}: expected values in {allowed} (vocab_size={V}), "
                                 f"got {bad}")

    def _check_state(self, state: MemoryState, batch: int):
        """A state this model can continue: its signature, batch size and tensors fit."""
        if not isinstance(state, MemoryState):
            raise TypeError(f"state: expected a MemoryState, got {type(state).__name__}")
        if len(state.layers) != len(self.layers):
            raise ValueError(
                f"state: expected {len(self.layers)} layer states, got {len(state.layers)}")
        if state.signature is not None:
            theirs = dict(state.signature)
            rows = theirs.pop("batch_size", batch)
            ours = self.state_signature()
            diff = [k for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)]
            if diff:
                said = ", ".join(f"{k}={theirs.get(k)!r} (this model: {ours.get(k)!r})"
                                 for k in diff)
                raise ValueError(f"state: made by a model of another config: {said}")
            if rows != batch:
                raise ValueError(f"state: expected a state of batch size {batch} like "
                                 f"input_ids, got one of batch size {rows}")
        c = self.config
        for i, (layer, ls) in enumerate(zip(self.layers, state.layers)):
            where = f"state.layers[{i}]"
            _check_shape(f"{where}.conv", ls.conv, (batch, c.d_inner, c.d_conv - 1))
            _check_shape(f"{where}.ssm", ls.ssm, (batch, c.d_inner, c.d_state))
            if layer.working_memory is None and ls.wm is not None:
                raise ValueError(f"{where}.wm: this model has no working memory "
                                 f"(wm_slots=0), got a state with slots")
            if ls.wm is not None:
                want = (batch, c.wm_heads, c.wm_slots, c.wm_head_dim)
                _check_shape(f"{where}.wm[0]", ls.wm[0], want)
                _check_shape(f"{where}.wm[1]", ls.wm[1], want)
            if layer.long_term_memory is None and ls.ltm is not None:
                raise ValueError(f"{where}.ltm: this model has no long-term memory "
                                 f"(ltm_controller='none'), got a state with a bank")
            if ls.ltm is not None:
                layer.long_term_memory.check_state(ls.ltm, batch, where=f"{where}.ltm")


CLASSIFIER_VERSION = 1  # of the classifier's files in a save_pretrained folder
POOLINGS = ("last", "mean")


class ClassifierOutput(NamedTuple):
    """logits: [B, n_classes] for the stream so far; loss: scalar or None; state: the
    MemoryState after the input."""

    logits: torch.Tensor
    loss: Optional[torch.Tensor]
    state: MemoryState


class MemoryClassifier(nn.Module):
    """Sequence classification on the language model's backbone: embedding, blocks and
    final norm (a `MemoryLM` of the same config, `backbone`), then a linear head on a read
    of the whole stream so far.

        h = backbone(input_ids)          # [B, T, D], normed, the state carried
        read = h[:, -1]                  # pooling "last": the final state's read
             | sum of h over the stream / tokens seen     # pooling "mean"
        logits = head(read)              # [B, n_classes]

    It streams like the language model: feeding a sequence in segments with the state
    carried gives, on the last segment, the logits of one call over the whole sequence
    (mean pooling carries its running sum in `state.pool`). The backbone's lm_head is not
    used (with tie_embeddings, the default, it holds no weights of its own).

    Args:
        config: MemoryConfig of the backbone.
        n_classes: K >= 2.
        pooling: "last" or "mean".

    Example:
        >>> model = MemoryClassifier(MemoryConfig(d_model=32, n_layers=1), n_classes=10)
        >>> ids = torch.randint(0, 256, (4, 64))
        >>> out = model(ids[:, :32])
        >>> out = model(ids[:, 32:], labels=torch.tensor([1, 2, 3, 4]), state=out.state)
        >>> out.logits.shape
        torch.Size([4, 10])
    """

    def __init__(self, config: MemoryConfig, n_classes: int, pooling: str = "last"):
        super().__init__()
        if not _is_count(n_classes) or n_classes < 2:
            raise ValueError(f"n_classes: expected an int >= 2, got {n_classes!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling: expected one of {POOLINGS}, got {pooling!r}")
        self.config, self.n_classes, self.pooling = config, n_classes, pooling
        self.backbone = MemoryLM(config)
        self.head = nn.Linear(config.d_model, n_classes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        self.backbone.reset_parameters()
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, labels: Optional[torch.Tensor] = None,
                state: Optional[MemoryState] = None) -> ClassifierOutput:
        """Run a segment of the streams and classify them as read so far.

        Args:
            input_ids: [B, T] int64 (or int32) token ids in [0, vocab_size).
            labels: [B] int64 classes in [0, n_classes). Optional.
            state: the MemoryState of the previous segment (None: fresh streams); updated
                in place and returned (a call that raises leaves it as it was).

        Returns:
            ClassifierOutput(logits [B, n_classes], loss (mean cross-entropy) or None,
            state).

        Raises:
            TypeError, ValueError: as `MemoryLM.forward` for input_ids and state; labels
            not a [B] integer tensor of classes.
        """
        bb = self.backbone
        bb._check_ids("input_ids", input_ids)
        B, T = input_ids.shape
        if labels is not None:
            if not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int32,
                                                                             torch.int64):
                raise TypeError(f"labels: expected a [B] int64 tensor of classes, got "
                                f"{getattr(labels, 'dtype', type(labels).__name__)}")
            if tuple(labels.shape) != (B,):
                raise ValueError(f"labels: expected shape ({B},), one class per row, got "
                                 f"{tuple(labels.shape)}")
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.n_classes):
                raise ValueError(f"labels: expected classes in [0, {self.n_classes}), got "
                                 f"[{int(labels.min())}, {int(labels.max())}]")
        if state is not None and self.pooling == "mean" and state.position and \
                state.pool is None:
            raise ValueError("state: expected a state made by a mean-pooling classifier "
                             "(state.pool), got one without")
        seen = 0 if state is None else state.position
        state, h = bb._advance(input_ids, state, lambda layer, x, ls: layer(x, ls),
                               head=nn.Identity())
        if self.pooling == "last":
            read = h[:, -1]
        else:
            total = h.float().sum(1)
            state.pool = total if state.pool is None else state.pool + total
            read = (state.pool / (seen + T)).to(h.dtype)
        logits = self.head(read)
        loss = None if labels is None else F.cross_entropy(logits.float(), labels.long())
        return ClassifierOutput(logits, loss, state)

    @torch.no_grad()
    def predict(self, input_ids: torch.Tensor, segment: int = 4096) -> torch.Tensor:
        """[B, n_classes] logits of whole sequences [B, T], fed in segments of `segment`
        tokens with the state carried (no gradients; the model's mode as it is)."""
        if not _is_count(segment) or segment < 1:
            raise ValueError(f"segment: expected a positive int, got {segment!r}")
        state = out = None
        for t0 in range(0, input_ids.shape[1], segment):
            out = self(input_ids[:, t0:t0 + segment], state=state)
            state = out.state
        if out is None:
            raise ValueError(f"input_ids: expected at least one token, got "
                             f"{tuple(input_ids.shape)}")
        return out.logits

    def save_pretrained(self, path) -> None:
        """Write the classifier to the folder `path`: the backbone as
        `MemoryLM.save_pretrained` writes it, plus `classifier.json` (n_classes, pooling)
        and `classifier.safetensors` (the head)."""
        from safetensors.torch import save as safetensors_bytes

        self.backbone.save_pretrained(path)
        head = {k: t.detach().contiguous() for k, t in self.head.state_dict().items()}
        data = safetensors_bytes(head)
        atomic_write(os.path.join(path, "classifier.safetensors"), lambda f: f.write(data))
        meta = {"format": "memmodel.classifier", "version": CLASSIFIER_VERSION,
                "n_classes": self.n_classes, "pooling": self.pooling}
        text = json.dumps(meta, indent=2).encode("utf-8")
        atomic_write(os.path.join(path, "classifier.json"), lambda f: f.write(text))

    @classmethod
    def from_pretrained(cls, path, device=None) -> MemoryClassifier:
        """A classifier written by `save_pretrained`, in eval mode.

        Raises:
            FileNotFoundError: a file of the folder is missing.
            ValueError: files that are not a memmodel classifier's, or do not fit.
        """
        from safetensors.torch import load_file

        backbone = MemoryLM.from_pretrained(path)
        with open(os.path.join(path, "classifier.json"), encoding="utf-8") as f:
            meta = json.load(f)
        if not isinstance(meta, dict) or meta.get("format") != "memmodel.classifier" or \
                meta.get("version") != CLASSIFIER_VERSION:
            raise ValueError(f"from_pretrained: {path}/classifier.json is not a memmodel "
                             f"classifier's of version {CLASSIFIER_VERSION}")
        model = cls(backbone.config, meta["n_classes"], meta["pooling"])
        model.backbone = backbone
        head = load_file(os.path.join(path, "classifier.safetensors"))
        try:
            model.head.load_state_dict(head)
        except RuntimeError as e:
            raise ValueError(f"from_pretrained: {path}/classifier.safetensors does not fit "
                             f"classifier.json: {e}") from e
        if device is not None:
            model.to(device)
        return model.eval()

"""What compiling the CPU fast paths costs a demo variant's model on a first run.

    python benchmarks/cpu_compile_cost.py --variant wm --out results/compile_wm.json

Builds the demo's `--variant` model (`memmodel.training.demo.DEMO_SPEC`, untrained), and in
one process with an empty inductor cache (a temporary TORCHINDUCTOR_CACHE_DIR, unless
`--cache` names one) times `--steps` training steps (a batch of the demo's size at its
training length, forward, backward, AdamW) and then two no-grad forwards of one
evaluation segment: the first of each pays the compilation, the later ones show the
steady cost. Writes the seconds of every call and of the compiler's phases
(`torch._dynamo.utils.compile_times`; nested, so they do not add up) as JSON, and prints
the calls and a few phases: the whole compilation, the graph's tracing into ATen
(`create_aot_dispatcher_function`, which holds the rest), inductor's C++ code generation
(`Scheduler.codegen`) and the C++ compiler (`compile_file`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="wm", help="one of the demo's variants")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--scan-chunk-size", type=int, default=None,
                   help="MemoryConfig.scan_chunk_size (default: the demo's); the CPU scan "
                        "unrolls this many steps per compiled chunk")
    p.add_argument("--cache", default=None,
                   help="inductor cache folder (default: a new, empty temporary one)")
    p.add_argument("--out", default="results/compile.json")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error(f"--steps: expected a positive int, got {args.steps}")
    tmp = None
    if args.cache is None:
        tmp = tempfile.TemporaryDirectory()
        args.cache = tmp.name
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = args.cache  # before torch compiles anything

    import torch
    from torch._dynamo.utils import compile_times

    from memmodel.kernels.utils import compile_enabled
    from memmodel.model import MemoryLM
    from memmodel.training.demo import demo_spec

    spec = demo_spec()
    if args.variant not in spec.variants:
        p.error(f"--variant: expected one of {spec.variants}, got {args.variant!r}")
    if not compile_enabled():
        p.error("the CPU fast paths run eagerly here (no C++ compiler, or MEMMODEL_COMPILE=0)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(spec.seed)
    config = spec.config(args.variant)
    if args.scan_chunk_size is not None:
        try:
            config = dataclasses.replace(config, scan_chunk_size=args.scan_chunk_size)
        except ValueError as e:
            p.error(f"--scan-chunk-size: {e}")
    model = MemoryLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.train["lr"])
    T = max(t["seq_len"] for t in spec.train_tasks)
    B = spec.train["batch_size"]
    gen = torch.Generator().manual_seed(0)
    calls = []

    def timed(name, fn):
        t0 = time.perf_counter()
        fn()
        calls.append({"call": name, "seconds": time.perf_counter() - t0})
        sys.stdout.write(f"{name}: {calls[-1]['seconds']:.2f} s\n")

    def train_step():
        x = torch.randint(0, 256, (B, T + 1), generator=gen)
        model(x[:, :-1], labels=x[:, 1:]).loss.backward()
        opt.step()
        opt.zero_grad()

    def eval_segment():
        with torch.no_grad():
            model(torch.randint(0, 256, (spec.eval_batch_size, spec.segment), generator=gen))

    model.train()
    for i in range(args.steps):
        timed(f"train step {i}", train_step)
    model.eval()
    for i in range(2):
        timed(f"eval segment {i}", eval_segment)
    phases = [line.split(",") for line in compile_times(repr="str", aggregate=True).splitlines()
              if line.count(",") == 1]
    phases = {name.strip(): float(v) for name, v in phases if _number(v)}
    out = dict(variant=args.variant, scan_chunk_size=config.scan_chunk_size,
               threads=args.threads, batch=B, train_len=T,
               segment=spec.segment, calls=calls, compile_phases=phases)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    for name in SHOWN:
        if name in phases:
            sys.stdout.write(f"  {name}: {phases[name]:.1f} s\n")
    if tmp is not None:
        tmp.cleanup()
    return out


SHOWN = ("_compile.compile_inner", "create_aot_dispatcher_function", "Scheduler.codegen",
         "compile_file", "PyCodeCache.load_by_key_path")


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


if __name__ == "__main__":
    main()

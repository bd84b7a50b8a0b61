"""Sequential-pixel classification of the 8x8 digits with `MemoryClassifier`.

    python -m memmodel.training.classify --out results/digits --variants ssm,wm,fifo \
        --lrs 1e-3,3e-3 --steps 300 --threads 1

For each variant (the ablation's configs, `AblationSpec.config`; heuristic controllers
only: a Q-learning controller would need its reward loop) and each learning rate, a
classifier is trained on the training images' 64 pixel bytes (`digit_pixels`); the learning
rate with the best validation macro F1 is kept, and that model alone is scored on the test
images. Written to --out: digits.json (one row per variant: the chosen lr, the validation
and test figures), digits.md (the table, with the command, machine and versions) and
confusion_<variant>.png (the test confusion matrix; needs matplotlib).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Optional

import torch

from ..metrics import ClassificationReport, classification_metrics, plot_confusion
from ..model import MemoryClassifier
from ..tasks import digit_pixels
from .ablation import AblationSpec, provenance

log = logging.getLogger("memmodel.training.classify")

CLASSIFIER_VARIANTS = ("ssm", "wm", "fifo", "importance", "store_all")


def train_classifier(model: MemoryClassifier, x: torch.Tensor, y: torch.Tensor, steps: int,
                     batch_size: int = 32, lr: float = 3e-3, seed: int = 0,
                     grad_clip: float = 1.0) -> dict[str, Any]:
    """AdamW on random batches (a generator seeded by `seed`) of (x [N, T], y [N]);
    returns steps, seconds and the mean loss of the last tenth of the steps."""
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"train_classifier: expected a positive int {name}, got "
                             f"{value!r}")
    if x.dim() != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"train_classifier: expected x [N, T] and y [N], got "
                         f"{list(x.shape)} and {list(y.shape)}")
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses, t0 = [], time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch_size,), generator=g)
        loss = model(x[idx], labels=y[idx]).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"train_classifier: a non-finite loss at step "
                                     f"{len(losses)}")
    tail = losses[-max(1, steps // 10):]
    return dict(steps=steps, seconds=time.perf_counter() - t0, final_loss=sum(tail) / len(tail))


def evaluate_classifier(model: MemoryClassifier, x: torch.Tensor, y: torch.Tensor,
                        batch_size: int = 256, segment: int = 4096,
                        names: Optional[list[str]] = None) -> ClassificationReport:
    """The model's predictions (argmax, eval mode, streamed in segments) on (x, y), scored
    by `classification_metrics` over the classes 0 .. n_classes - 1."""
    was = model.training
    model.eval()
    try:
        pred = torch.cat([model.predict(x[i: i + batch_size], segment=segment).argmax(-1)
                          for i in range(0, x.shape[0], batch_size)])
    finally:
        model.train(was)
    return classification_metrics(y, pred, labels=range(model.n_classes), names=names)


def run_digits(spec: AblationSpec, variants: list[str], lrs: list[float], steps: int,
               batch_size: int, out, seed: int = 0, pooling: str = "last",
               command: Optional[str] = None) -> list[dict[str, Any]]:
    """Train, select on validation, test; write the files of the module docstring."""
    bad = [v for v in variants if v not in CLASSIFIER_VARIANTS]
    if bad:
        raise ValueError(f"run_digits: expected variants from {CLASSIFIER_VARIANTS}, got {bad}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = {s: digit_pixels(s) for s in ("train", "val", "test")}
    rows = []
    for variant in variants:
        best = None
        for lr in lrs:
            torch.manual_seed(seed)
            model = MemoryClassifier(spec.config(variant), n_classes=10, pooling=pooling)
            trained = train_classifier(model, *data["train"], steps=steps,
                                       batch_size=batch_size, lr=lr, seed=seed)
            val = evaluate_classifier(model, *data["val"])
            log.info("%s lr=%g: val accuracy %.3f, macro F1 %.3f (%.0f s)", variant, lr,
                     val.accuracy, val.f1, trained["seconds"])
            if best is None or val.f1 > best[1].f1:
                best = (lr, val, model, trained)
        lr, val, model, trained = best
        test = evaluate_classifier(model, *data["test"])
        plot_confusion(test, out / f"confusion_{variant}.png",
                       title=f"digits, {variant}: test accuracy {test.accuracy:.3f}, "
                             f"macro F1 {test.f1:.3f}")
        rows.append(dict(variant=variant, lr=lr, steps=steps, batch_size=batch_size,
                         pooling=pooling, train_seconds=trained["seconds"],
                         final_loss=trained["final_loss"], val_accuracy=val.accuracy,
                         val_macro_f1=val.f1, n=test.n, accuracy=test.accuracy,
                         ci_low=test.ci_low, ci_high=test.ci_high,
                         macro_precision=test.precision, macro_recall=test.recall,
                         macro_f1=test.f1, f1_low=test.f1_low, f1_high=test.f1_high,
                         confusion=test.confusion))
        (out / "digits.json").write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    lines = ["# Sequential-pixel digits, MemoryClassifier", "", provenance(command),
             f"Learning rate chosen per variant on validation macro F1 among {lrs}; the "
             f"figures are on the {rows[0]['n']} test images.", "",
             "| variant | lr | val macro F1 | test accuracy [95% CI] | macro precision | "
             "macro recall | macro F1 [95% CI] |",
             "| --- | ---: | ---: | --- | ---: | ---: | --- |"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['lr']:g} | {r['val_macro_f1']:.3f} | "
                     f"{r['accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | "
                     f"{r['macro_precision']:.3f} | {r['macro_recall']:.3f} | "
                     f"{r['macro_f1']:.3f} [{r['f1_low']:.3f}, {r['f1_high']:.3f}] |")
    (out / "digits.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description="Sequential-pixel digit classification with "
                                            "MemoryClassifier: lr chosen on val, test scored.")
    p.add_argument("--out", required=True, help="folder for the results")
    p.add_argument("--spec", default=None, help="a JSON AblationSpec for the model configs")
    p.add_argument("--variants", default="ssm,wm,fifo")
    p.add_argument("--lrs", default="1e-3,3e-3", help="comma-separated learning rates")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--pooling", default="last", choices=("last", "mean"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    data = {}
    if args.spec:
        with open(args.spec, encoding="utf-8") as f:
            data = json.load(f)
    spec = AblationSpec.from_dict(data)
    import sys

    command = f"python -m memmodel.training.classify {' '.join(sys.argv[1:])}".strip()
    rows = run_digits(spec, args.variants.split(","), [float(v) for v in args.lrs.split(",")],
                      args.steps, args.batch_size, args.out, args.seed, args.pooling, command)
    for r in rows:
        print(f"{r['variant']}: lr {r['lr']:g}, test accuracy {r['accuracy']:.3f}, "
              f"macro F1 {r['macro_f1']:.3f} [{r['f1_low']:.3f}, {r['f1_high']:.3f}]")


if __name__ == "__main__":
    main()

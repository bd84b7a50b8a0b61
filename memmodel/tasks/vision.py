"""Vision: scikit-learn's 8x8 handwritten digits (1,797 real images, shipped with
scikit-learn: nothing is downloaded), read pixel by pixel.

Each image is 64 bytes, its pixels in row-major order, the 17 grey levels 0..16 written as
the letters a..q. `digit_pixels(split)` gives them for sequential-pixel classification (the
`MemoryClassifier`); `DigitsStreamTask` is the long-range form: a stream of many images
with one marked, its class asked at the end:

    x:  . . . |pixels of image 1|pixels of image 2 ... #pixels of the marked one ... |pixels ?
    y:  -100 everywhere ...                                                              7

The images are split once, class by class (70% train, 15% val, 15% test, by a fixed
permutation), so a val or test image never occurs in a training stream. Needs the
`domains` extra (scikit-learn).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from .base import Task, TaskBatch, check_bytes, check_depth, check_disjoint, check_int, make_batch
from .sampling import as_bytes, place, random_filler

DIGIT_LEVELS = "abcdefghijklmnopq"  # the byte of each grey level 0..16
DIGIT_SHARES = (0.7, 0.15, 0.15)  # of each class's images: train, val, test
DIGIT_SPLIT_SEED = 0  # the permutation the split is cut from: fixed, not a task seed
IMAGE_PIXELS = 64


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError("the digits tasks need scikit-learn (pip install "
                          "'memmodel[domains]')") from e
    data = load_digits()
    images = torch.as_tensor(data.data, dtype=torch.int64)  # [1797, 64] in 0..16
    return images, torch.as_tensor(data.target, dtype=torch.int64)


@functools.lru_cache(maxsize=1)
def digit_split_indices() -> dict[str, torch.Tensor]:
    """{split: [N_split] int64 indices into `load_digits()`}, disjoint, stratified: each
    class's images in a fixed random order (DIGIT_SPLIT_SEED), cut at DIGIT_SHARES."""
    _, labels = _digits()
    g = torch.Generator().manual_seed(DIGIT_SPLIT_SEED)
    parts: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "test": []}
    for c in range(10):
        idx = (labels == c).nonzero()[:, 0]
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        a = round(DIGIT_SHARES[0] * idx.numel())
        b = a + round(DIGIT_SHARES[1] * idx.numel())
        parts["train"].append(idx[:a])
        parts["val"].append(idx[a:b])
        parts["test"].append(idx[b:])
    return {k: torch.cat(v).sort().values for k, v in parts.items()}


def digit_pixels(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The split's images as pixel bytes and their classes.

    Returns:
        x: [N, 64] int64 bytes (grey level v is the byte ord("a") + v), row-major pixels;
        y: [N] int64 classes 0..9.

    Example:
        >>> x, y = digit_pixels("test")
        >>> x.shape[1], int(y.max())
        (64, 9)
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"digit_pixels: expected split 'train', 'val' or 'test', got "
                         f"{split!r}")
    images, labels = _digits()
    idx = digit_split_indices()[split]
    return images[idx] + ord(DIGIT_LEVELS[0]), labels[idx]


@dataclass
class DigitsStreamTask(Task):
    """A stream of real 8x8 digit images, one marked, its class asked at the end.

    Args:
        seq_len: T >= 66. The stream holds n_images = (T - 1) // 65 images, each a
            separator (the marked one: the marker) and its 64 pixel bytes, packed to end
            just before the query; filler bytes pad the start. T = 66: one image, the
            sequential-pixel classification of that image.
        marker, separator, query, filler: one byte each, none a pixel byte or a digit.
        depth: None: the marked image's place uniform over the n_images; a number in
            [0, 1]: image round(depth * (n_images - 1)).
        seed: the base of the split seeds.

    The marked image's class is drawn uniformly from 0..9 (labels balanced in
    expectation), then the image uniformly among the split's images of that class; the
    other images uniformly among all the split's images. Chance 0.1.

    Example:
        >>> task = DigitsStreamTask(seq_len=1024)
        >>> batch = task.sample(2, split="test")
        >>> task.n_images, batch.answers.shape
        (15, torch.Size([2, 1, 1]))
    """

    seq_len: int = 1024
    marker: str = "#"
    separator: str = "|"
    query: str = "?"
    filler: str = "."
    depth: Optional[float] = None
    seed: int = 0

    name: ClassVar[str] = "digits_stream"
    format: ClassVar[str] = (
        "filler, then (seq_len - 1) // 65 real 8x8 digit images of the split, each a "
        "separator and 64 pixel bytes a..q (the marked one: the marker), then the query; "
        "the answer is the marked image's class, one digit")
    scoring: ClassVar[str] = "classes"

    def __post_init__(self):
        owner = "DigitsStreamTask"
        check_int(owner, "seq_len", self.seq_len, minimum=IMAGE_PIXELS + 2)
        check_int(owner, "seed", self.seed, minimum=0)
        for name in ("marker", "separator", "query", "filler"):
            check_bytes(owner, name, getattr(self, name), one=True)
        check_disjoint(owner, "marker", {"pixels": DIGIT_LEVELS, "digits": "0123456789",
                                         "marker": self.marker, "separator": self.separator,
                                         "query": self.query, "filler": self.filler})
        check_depth(owner, self.depth)

    @property
    def n_images(self) -> int:
        return (self.seq_len - 1) // (IMAGE_PIXELS + 1)

    @property
    def queries(self) -> int:
        return 1

    @property
    def answer_length(self) -> int:
        return 1

    @property
    def answer_alphabet(self) -> str:
        return "0123456789"

    @property
    def class_names(self) -> list[str]:
        return list(self.answer_alphabet)

    def _draw(self, batch_size, generator, split) -> TaskBatch:
        B, T, n, W = batch_size, self.seq_len, self.n_images, IMAGE_PIXELS + 1
        x, y = digit_pixels(split or "train")
        cls = torch.randint(0, 10, (B,), generator=generator)
        # the marked image: uniform among the split's images of its class
        pick = torch.rand(B, y.numel(), generator=generator)
        pick[y[None, :] != cls[:, None]] = -1.0
        marked = pick.argmax(1)
        idx = torch.randint(0, y.numel(), (B, n), generator=generator)
        slot = place(generator, B, 0, n - 1, self.depth)
        rows = torch.arange(B)
        idx[rows, slot] = marked
        items = torch.empty(B, n, W, dtype=torch.int64)
        items[:, :, 0] = ord(self.separator)
        items[rows, slot, 0] = ord(self.marker)
        items[:, :, 1:] = x[idx]
        pad = T - 1 - n * W
        seq = torch.cat([random_filler(generator, B, pad, self.filler), items.view(B, -1),
                         torch.full((B, 1), ord(self.query), dtype=torch.int64),
                         as_bytes(self.answer_alphabet)[cls][:, None]], 1)
        answer_pos = torch.full((B, 1, 1), T - 1, dtype=torch.int64)
        return make_batch(seq, answer_pos, (pad + slot * W)[:, None])

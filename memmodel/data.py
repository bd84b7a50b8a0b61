"""The embedded default data: a byte-level corpus that ships with Python itself.

No download happens at run time. The corpus is the source text (code, docstrings and
comments, mostly English prose in the docstrings) of a fixed list of pure-Python modules of
the standard library, read from the interpreter's own installation. It is split by
position into train (90%), val (5%) and test (5%) byte streams. Modules missing from an
interpreter are skipped, so the exact bytes can differ between Python versions; the split
of one installation is always the same.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path
from typing import Optional

import torch

# Standard-library modules with long docstrings, present since Python 3.8.
CORPUS_MODULES = (
    "argparse", "ast", "calendar", "collections/__init__", "configparser", "csv",
    "dataclasses", "datetime", "difflib", "doctest", "email/message", "enum", "fractions",
    "ftplib", "functools", "gettext", "heapq", "http/client", "http/cookiejar", "imaplib",
    "inspect", "ipaddress", "json/__init__", "json/decoder", "locale", "logging/__init__",
    "mailbox", "optparse", "pathlib", "pickle", "pickletools", "pprint", "pydoc", "random",
    "shutil", "smtplib", "statistics", "string", "subprocess", "tarfile", "tempfile",
    "textwrap", "threading", "tokenize", "typing", "unittest/case", "unittest/mock",
    "urllib/parse", "urllib/request", "uuid", "weakref", "zipfile",
)
SPLITS = {"train": (0.0, 0.9), "val": (0.9, 0.95), "test": (0.95, 1.0)}


def load_modules() -> dict[str, bytes]:
    """The source bytes of each module of CORPUS_MODULES found, by name, in that order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = {}
    for name in CORPUS_MODULES:
        for path in (root / f"{name}.py", root / name / "__init__.py"):
            if path.is_file():
                out[name] = path.read_bytes()
                break
    if not out:
        raise RuntimeError(f"no standard-library source found under {root}")
    return out


def module_split(name: str) -> str:
    """The split a whole module belongs to, for the tasks that keep documents whole (the
    long-document language tasks): of CORPUS_MODULES sorted by name, the 9th of every ten
    is "val", the 10th "test", the others "train" (42 / 5 / 5 of the 52)."""
    i = sorted(CORPUS_MODULES).index(name)
    return {8: "val", 9: "test"}.get(i % 10, "train")


def load_corpus() -> bytes:
    """The concatenated source bytes of CORPUS_MODULES (a few MB)."""
    return b"\n".join(load_modules().values())


class ByteCorpus:
    """Train/val/test byte streams and random batches of windows from them.

    Example:
        >>> corpus = ByteCorpus()
        >>> x, y = corpus.batch("train", batch_size=4, seq_len=128)
        >>> x.shape, y.shape          # y is x shifted by one byte
        (torch.Size([4, 128]), torch.Size([4, 128]))
    """

    vocab_size = 256

    def __init__(self, data: Optional[bytes] = None):
        raw = torch.frombuffer(bytearray(load_corpus() if data is None else data),
                               dtype=torch.uint8)
        n = raw.numel()
        self.splits: dict[str, torch.Tensor] = {
            name: raw[int(lo * n): int(hi * n)] for name, (lo, hi) in SPLITS.items()
        }

    def batch(
        self,
        split: str,
        batch_size: int,
        seq_len: int,
        generator: Optional[torch.Generator] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows: x [batch_size, seq_len] int64 and y = the next byte of each."""
        if split not in self.splits:
            raise ValueError(f"split: expected one of {tuple(self.splits)}, got {split!r}")
        data = self.splits[split]
        if seq_len + 1 > data.numel():
            raise ValueError(
                f"seq_len: expected at most {data.numel() - 1} for split {split!r}, got {seq_len}"
            )
        starts = torch.randint(0, data.numel() - seq_len, (batch_size,), generator=generator)
        idx = starts[:, None] + torch.arange(seq_len + 1)
        window = data[idx].long()
        return window[:, :-1], window[:, 1:]

"""Biology: DNA with long-range structure built from real transcription-factor binding
motifs.

The motifs are JASPAR position frequency matrices as pyjaspar ships them (SQLite files
inside the package: nothing is downloaded; the `domains` extra). A sequence is background
DNA with two binding sites planted: one far from the end (up to the whole sequence away),
one in the last `near` bases; at the end the query asks which pair of motifs occurred:

    x:  G A T T C ... C C A C C A G G G G G C G C ... T A C A ... G A A C A T G C C C ?
        background     site of motif i (far)              site of motif j (near)
    y:  -100 everywhere ...                                                        class

The class is i * n_motifs + j, one byte of class_alphabet. A model that reads only the end
of the sequence knows j but not i: its accuracy tops out at 1 / n_motifs.

What is real: the matrices. What is generated: the background (independent uniform bases)
and every site, each base drawn from its matrix column (counts normalised, plus
`pseudocount`), on either strand. Each site string belongs to one split (`answer_split` of
its bytes), and a split's streams plant only its own site strings.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from .base import (
    SPLIT_SHARES,
    SPLITS,
    Task,
    TaskBatch,
    answer_split,
    check_bytes,
    check_depth,
    check_int,
    make_batch,
)
from .sampling import as_bytes, place, random_filler, write

DNA = "ACGT"
CLASS_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
DEFAULT_MOTIFS = "MA0139.2,MA0106.3"  # CTCF (15 bp) and TP53 (18 bp), JASPAR CORE


@functools.lru_cache(maxsize=64)
def load_motif(matrix_id: str, release: str = "JASPAR2024") -> tuple[str, tuple]:
    """(TF name, counts) of a JASPAR matrix from pyjaspar's shipped database.

    Returns:
        the factor's name and the counts as a tuple of L rows (A, C, G, T) of floats.

    Raises:
        ImportError: pyjaspar is not installed (the `domains` extra).
        ValueError: an unknown release or matrix id.
    """
    try:
        import pyjaspar
    except ImportError as e:
        raise ImportError("the motif tasks need pyjaspar (pip install "
                          "'memmodel[domains]')") from e
    if release not in pyjaspar.jaspar_releases:
        raise ValueError(f"load_motif: expected a release in "
                         f"{sorted(pyjaspar.jaspar_releases)}, got {release!r}")
    motif = pyjaspar.jaspardb(release=release).fetch_motif_by_id(matrix_id)
    if motif is None:
        raise ValueError(f"load_motif: no matrix {matrix_id!r} in {release}")
    counts = tuple(zip(*(motif.counts[b] for b in DNA)))
    return str(motif.name), tuple(tuple(float(c) for c in col) for col in counts)


def site_probabilities(counts, pseudocount: float) -> torch.Tensor:
    """[L, 4] float64: each column's counts plus `pseudocount` times the column's total
    (spread evenly over the 4 bases), normalised."""
    c = torch.tensor(counts, dtype=torch.float64)
    total = c.sum(1, keepdim=True)
    c = c + pseudocount * total / 4
    return c / c.sum(1, keepdim=True)


def draw_sites(generator: Optional[torch.Generator], probs: torch.Tensor, count: int,
               split: Optional[str], both_strands: bool) -> torch.Tensor:
    """[count, L] sites (bytes of ACGT), base by base from `probs` [L, 4]; each reverse
    complemented with probability 1/2 when both_strands; with a split, only sites whose
    answer_split is that split (by rejection)."""
    table = as_bytes(DNA)
    out = torch.empty(count, probs.shape[0], dtype=torch.int64)
    filled, rounds = 0, 0
    while filled < count:
        need = count - filled
        draw = need if split is None else int(need * 1.25 / SPLIT_SHARES[SPLITS.index(split)])
        draw += 16 if split is not None else 0
        u = torch.rand(draw, probs.shape[0], 1, generator=generator, dtype=torch.float64)
        base = (u > probs.cumsum(1)[None, :, :3]).sum(2)  # [draw, L] in 0..3
        if both_strands:
            flip = torch.rand(draw, generator=generator) < 0.5
            base = torch.where(flip[:, None], 3 - base.flip(1), base)
        sites = table[base]
        if split is not None:
            sites = sites[answer_split(sites) == SPLITS.index(split)]
        sites = sites[:need]
        out[filled: filled + len(sites)] = sites
        filled += len(sites)
        rounds += 1
        if rounds > 1000:
            raise ValueError("draw_sites: a motif too conserved to give sites of every "
                             "split (fewer than about 20 distinct sites)")
    return out


@dataclass
class MotifPairTask(Task):
    """Which pair of JASPAR motifs a DNA sequence holds, one far from the end, one near.

    Args:
        seq_len: T.
        motifs: comma-separated JASPAR matrix ids (2 to 6 of them), e.g. "MA0139.2,MA0106.3".
        release: the JASPAR release pyjaspar reads them from.
        near: the second site lies in the last `near` bases before the query (at least
            the longest motif's length).
        pseudocount: added to each matrix column, as a fraction of its total count.
        both_strands: sites on either strand (reverse complement with probability 1/2).
        query: the byte before the answer (not a base, not a class byte).
        depth: None: the far site uniform over 0 .. T - 1 - near - L; a number in [0, 1]:
            at round(depth * (T - 1 - near - L)).
        seed: the base of the split seeds.

    The first motif i and the second j are drawn uniformly and independently, so the
    n_motifs ** 2 classes are balanced in expectation; chance 1 / n_motifs ** 2.

    Example:
        >>> task = MotifPairTask(seq_len=2048)
        >>> task.class_names
        ['CTCF>CTCF', 'CTCF>TP53', 'TP53>CTCF', 'TP53>TP53']
    """

    seq_len: int = 1024
    motifs: str = DEFAULT_MOTIFS
    release: str = "JASPAR2024"
    near: int = 64
    pseudocount: float = 0.0
    both_strands: bool = True
    query: str = "?"
    depth: Optional[float] = None
    seed: int = 0

    name: ClassVar[str] = "motif_pair"
    format: ClassVar[str] = (
        "uniform random ACGT background; a site of JASPAR motif i far from the end, a site "
        "of motif j in the last `near` bases, each base drawn from its matrix; then the "
        "query: the answer is the class i * n_motifs + j, one byte")
    scoring: ClassVar[str] = "classes"

    def __post_init__(self):
        owner = "MotifPairTask"
        check_int(owner, "seq_len", self.seq_len)
        check_int(owner, "near", self.near)
        check_int(owner, "seed", self.seed, minimum=0)
        check_bytes(owner, "query", self.query, one=True)
        check_depth(owner, self.depth)
        if not isinstance(self.both_strands, bool):
            raise ValueError(f"{owner}.both_strands: expected a bool, got "
                             f"{self.both_strands!r}")
        if not isinstance(self.pseudocount, (int, float)) or isinstance(self.pseudocount, bool) \
                or not 0 <= self.pseudocount <= 1:
            raise ValueError(f"{owner}.pseudocount: expected a number in [0, 1], got "
                             f"{self.pseudocount!r}")
        ids = self.motif_ids
        if not isinstance(self.motifs, str) or not 2 <= len(ids) <= 6 or \
                len(set(ids)) != len(ids):
            raise ValueError(f"{owner}.motifs: expected 2 to 6 distinct comma-separated "
                             f"JASPAR ids, got {self.motifs!r}")
        if self.query in DNA + self.answer_alphabet:
            raise ValueError(f"{owner}.query: expected a byte that is no base and no class "
                             f"byte, got {self.query!r}")
        self._loaded = [load_motif(i, self.release) for i in ids]
        longest = max(len(c) for _, c in self._loaded)
        if self.near < longest:
            raise ValueError(f"{owner}.near: expected at least the longest motif's length "
                             f"{longest}, got {self.near}")
        if self.seq_len < self.near + longest + 1:
            raise ValueError(f"{owner}.seq_len: expected at least near + longest motif + 1 "
                             f"= {self.near + longest + 1}, got {self.seq_len}")

    @property
    def motif_ids(self) -> list[str]:
        return [s.strip() for s in str(self.motifs).split(",") if s.strip()]

    @property
    def motif_names(self) -> list[str]:
        return [name for name, _ in self._loaded]

    @property
    def n_motifs(self) -> int:
        return len(self.motif_ids)

    @property
    def queries(self) -> int:
        return 1

    @property
    def answer_length(self) -> int:
        return 1

    @property
    def answer_alphabet(self) -> str:
        return CLASS_ALPHABET[: self.n_motifs ** 2]

    @property
    def class_names(self) -> list[str]:
        names = self.motif_names
        return [f"{a}>{b}" for a in names for b in names]

    def _draw(self, batch_size, generator, split) -> TaskBatch:
        B, T, M = batch_size, self.seq_len, self.n_motifs
        seq = random_filler(generator, B, T + 1, DNA)
        first = torch.randint(0, M, (B,), generator=generator)
        second = torch.randint(0, M, (B,), generator=generator)
        far_pos = torch.empty(B, dtype=torch.int64)
        for m, (_, counts) in enumerate(self._loaded):
            probs = site_probabilities(counts, self.pseudocount)
            L = probs.shape[0]
            for which, rows in ((0, (first == m).nonzero()[:, 0]),
                                (1, (second == m).nonzero()[:, 0])):
                if rows.numel() == 0:
                    continue
                sites = draw_sites(generator, probs, rows.numel(), split, self.both_strands)
                if which == 0:
                    start = place(generator, rows.numel(), 0, T - 1 - self.near - L,
                                  self.depth)
                    far_pos[rows] = start
                else:
                    start = torch.randint(T - 1 - self.near, T - L, (rows.numel(),),
                                          generator=generator)
                sub = seq[rows]
                write(sub, start[:, None], sites[:, None])
                seq[rows] = sub
        seq[:, T - 1] = ord(self.query)
        seq[:, T] = as_bytes(self.answer_alphabet)[first * M + second]
        answer_pos = torch.full((B, 1, 1), T - 1, dtype=torch.int64)
        return make_batch(seq, answer_pos, far_pos[:, None])

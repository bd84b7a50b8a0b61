"""Dots over masked tiles that keep a masked-out term out even when its other factor is
inf or NaN.

A kernel that zeroes a weight (a causal or interval mask, a zero write weight) and then
feeds the weight tile to `tl.dot` still multiplies the zero by the other operand, and
0 * inf = 0 * NaN = NaN: a bad value that the math excludes would reach every row the
dot sums it into. `dot_hard_zeros` is the dot in which a zero weight is a hard zero.
"""

import triton
import triton.language as tl


@triton.jit
def not_finite(x):
    """True where x is inf or NaN."""
    return (x != x) | (tl.abs(x) == float("inf"))


@triton.jit
def dot_hard_zeros(b_a, b_x, PREC: tl.constexpr):
    """tl.dot(a, x) [I, D] for a [I, J] and x [J, D], in which a zero a[i, j] contributes
    nothing even where row j of x holds an inf or NaN. A nonzero a[i, j] that meets a
    non-finite value in row j makes row i of the result NaN (where plain tl.dot would give
    inf or NaN in some of its columns). For finite x the result is tl.dot(a, x) bit for
    bit. a is cast to x's dtype, as the callers' dots do."""
    b_bad = not_finite(b_x)  # [J, D]
    b_xf = tl.where(b_bad, 0.0, b_x).to(b_x.dtype)  # [J, D] the bad values zeroed
    b_row = tl.where(tl.max(b_bad.to(tl.int32), axis=1) > 0, float("nan"), 0.0)  # [J]
    b_a = tl.where(b_a == 0.0, 0.0, b_a + b_row[None, :])  # [I, J] live weights meet bad rows
    return tl.dot(b_a.to(b_x.dtype), b_xf, input_precision=PREC)

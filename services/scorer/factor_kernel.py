"""The batch loop that writes `profile_scores.factors` JSON, compiled (Numba).

`batch.factor_json` renders each distinct head (`{"code":…,"text":…,"impact":`,
or `[code,text,` for the stored rows) once;
this loop lays every row out in one ASCII buffer: `[`, per filled slot its
rendered head, its impact as Python's `repr` of the float rounded to 6
decimals writes it (what `json.dumps` writes), its importance tail, then `]`
and a newline. In Python the same rows took ~5 µs each, most of it in
`float.__repr__` and string joins.

Impacts come as integers in millionths (`m = rint(impact × 10⁶)`; the value
`round(impact, 6)` is m / 10⁶): for 100 ≤ |m| < 10¹⁵ `repr` writes the decimal
m / 10⁶ without trailing zeros: below 1e9 doubles are finer than 10⁻⁶, so
no other decimal of at most 6 places (no shorter one) maps to the same
double, and `repr` writes no exponent from 1e-4 up to 1e16. The
caller renders the rest (|m| < 100, -0.0, NaN, ±inf, huge) in Python and
points at those texts instead. Compiled once per machine and cached on disk
(`cache=True`).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit

__all__ = ["LARGE", "SMALL", "rows_json", "warm"]

# Impacts in millionths the loop writes itself: SMALL ≤ |m| < LARGE (17 characters at most).
SMALL = 100
LARGE = 10**15


def warm() -> None:
    """Load the loop's machine code (or compile it, where Numba has no cache yet), so
    processes forked afterwards start with it (the scorer's forkserver: `kernel_preload`)."""
    rows_json.compile(_SIGNATURE)


@njit(cache=True, nogil=True)
def _copy(out: np.ndarray, at: int, source: np.ndarray, start: int, end: int) -> int:
    out[at : at + end - start] = source[start:end]
    return at + end - start


@njit(cache=True, nogil=True)
def rows_json(
    heads: np.ndarray,
    head_start: np.ndarray,
    head: np.ndarray,
    micros: np.ndarray,
    texts: np.ndarray,
    text_start: np.ndarray,
    text: np.ndarray,
    tails: np.ndarray,
    tail_start: np.ndarray,
    tail: np.ndarray,
) -> np.ndarray:
    """Every row's JSON followed by a newline, as ASCII bytes (uint8).

    `heads`/`head_start`: rendered heads end to end and where each starts (one
    more start than heads); `head` [n, k]: each slot's head, -1 where the slot
    is empty (a row's factors end at its first empty slot); `micros` [n, k]:
    the impact in millionths; `texts`/`text_start`: impacts rendered by the
    caller, `text` [n, k] which one, -1 where the loop writes `micros`;
    `tails`/`tail_start`: the importance tails, `tail` [n, k] which one (its
    importance and whether another factor follows).
    """
    n, k = head.shape
    size = 3 * n  # "[", "]" and "\n"
    for i in range(n):
        for s in range(k):
            h = head[i, s]
            if h < 0:
                break
            size += head_start[h + 1] - head_start[h]
            size += tail_start[tail[i, s] + 1] - tail_start[tail[i, s]]
            j = text[i, s]
            size += 17 if j < 0 else text_start[j + 1] - text_start[j]  # "-", 9 digits, ".", 6
    out = np.empty(size, dtype=np.uint8)
    digits = np.empty(20, dtype=np.uint8)
    at = 0
    for i in range(n):
        out[at] = 91  # [
        at += 1
        for s in range(k):
            h = head[i, s]
            if h < 0:
                break
            at = _copy(out, at, heads, head_start[h], head_start[h + 1])
            j = text[i, s]
            if j >= 0:
                at = _copy(out, at, texts, text_start[j], text_start[j + 1])
            else:
                m = micros[i, s]
                if m < 0:
                    out[at] = 45  # -
                    at += 1
                    m = -m
                whole, frac = m // 1_000_000, m % 1_000_000
                count = 0
                while True:
                    digits[count] = 48 + whole % 10
                    count += 1
                    whole //= 10
                    if whole == 0:
                        break
                for d in range(count - 1, -1, -1):
                    out[at] = digits[d]
                    at += 1
                out[at] = 46  # .
                at += 1
                if frac == 0:
                    out[at] = 48
                    at += 1
                else:
                    places = 6
                    while frac % 10 == 0:
                        frac //= 10
                        places -= 1
                    for d in range(places - 1, -1, -1):
                        out[at + d] = 48 + frac % 10
                        frac //= 10
                    at += places
            t = tail[i, s]
            at = _copy(out, at, tails, tail_start[t], tail_start[t + 1])
        out[at] = 93  # ]
        out[at + 1] = 10  # newline
        at += 2
    return out[:at]


_TEXT = numba.types.Array(numba.types.uint8, 1, "C", readonly=True)  # bytes, as NumPy sees them
_I64 = numba.types.Array(numba.types.int64, 1, "C")
_I64_2 = numba.types.Array(numba.types.int64, 2, "C")
# The argument types `batch.factor_json` passes (C-contiguous), in order; the tests hold a real
# call to this signature.
_SIGNATURE = (_TEXT, _I64, _I64_2, _I64_2, _TEXT, _I64, _I64_2, _TEXT, _I64, _I64_2)

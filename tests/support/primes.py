"""An independent reference prime counter (plain sieve of Eratosthenes over a window)."""

from __future__ import annotations


def count_primes(lo: int, hi: int) -> int:
    """Number of primes in [lo, hi)."""
    if hi <= 2:
        return 0
    lo = max(lo, 2)
    limit = int(hi**0.5) + 2
    small = [True] * (limit + 1)
    small[0] = small[1] = False
    for i in range(2, int(limit**0.5) + 1):
        if small[i]:
            for j in range(i * i, limit + 1, i):
                small[j] = False
    window = [True] * (hi - lo)
    for p in (i for i, ok in enumerate(small) if ok):
        start = max(p * p, ((lo + p - 1) // p) * p)
        for m in range(start, hi, p):
            window[m - lo] = False
    return sum(window)


def sweep_count(start: int, workers: int, chunk: int) -> int:
    return count_primes(start, start + workers * chunk)

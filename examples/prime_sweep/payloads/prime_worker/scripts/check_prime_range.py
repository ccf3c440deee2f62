#!/usr/bin/env python3
"""Count the primes in an inclusive range; print one JSON object on stdout.

Usage: check_prime_range.py WORKER_ID START END
"""

import json
import sys


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0 or n % 3 == 0:
        return n in (2, 3)
    f = 5
    while f * f <= n:
        if n % f == 0 or n % (f + 2) == 0:
            return False
        f += 6
    return True


def main() -> None:
    if len(sys.argv) != 4:
        sys.exit("usage: check_prime_range.py WORKER_ID START END")
    worker_id, start, end = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if end < start:
        sys.exit(f"empty range {start}..{end}")
    primes = [n for n in range(start, end + 1) if is_prime(n)]
    print(json.dumps({
        "worker_id": worker_id,
        "range_start": start,
        "range_end": end,
        "checked_numbers": end - start + 1,
        "prime_count": len(primes),
        "primes": primes,
    }))


if __name__ == "__main__":
    main()

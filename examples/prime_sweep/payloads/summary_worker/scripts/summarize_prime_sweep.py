#!/usr/bin/env python3
"""Summarize the collected worker results; print {"complete_job": {...}} on stdout.

Reads the collector's output {messages, count, last_message} from MIRROR_NEURON_INPUT_FILE;
each message is a worker's {agent_id, sandbox: {stdout, ...}} whose stdout is its JSON.
"""

import json
import os
import sys


def main() -> None:
    with open(os.environ["MIRROR_NEURON_INPUT_FILE"], encoding="utf-8") as f:
        collected = json.load(f)
    chunks = []
    for message in collected.get("messages", []):
        try:
            chunk = json.loads(message["sandbox"]["stdout"])
        except (KeyError, TypeError, ValueError) as e:
            sys.exit(f"worker {message.get('agent_id', '?')}: unreadable result ({e})")
        chunk["agent_id"] = message.get("agent_id")
        chunks.append(chunk)
    if not chunks:
        sys.exit("no worker results to summarize")
    chunks.sort(key=lambda c: c["range_start"])
    primes = sorted(p for c in chunks for p in c["primes"])
    print(json.dumps({"complete_job": {
        "mode": "prime_sweep",
        "worker_count": len(chunks),
        "checked_numbers": sum(c["checked_numbers"] for c in chunks),
        "prime_count": len(primes),
        "range_start": chunks[0]["range_start"],
        "range_end": chunks[-1]["range_end"],
        "first_25_primes": primes[:25],
        "last_25_primes": primes[-25:],
        "chunks": [{k: v for k, v in c.items() if k != "primes"} for c in chunks],
    }}))


if __name__ == "__main__":
    main()

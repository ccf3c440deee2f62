#!/usr/bin/env python3
"""Reduce: merge the counts the collector gathered; print {"complete_job": {...}}.

Usage: merge_counts.py INPUT_FILE   (the collector's {messages, count, last_message})
"""

import json
import sys
from collections import Counter


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        collected = json.load(f)
    total: Counter[str] = Counter()
    files = {}
    for message in collected["messages"]:
        part = json.loads(message["sandbox"]["stdout"])
        total.update(part["counts"])
        files[part["file"]] = part["words"]
    print(json.dumps({"complete_job": {
        "mode": "wordcount",
        "files": dict(sorted(files.items())),
        "total_words": sum(total.values()),
        "distinct_words": len(total),
        "top_10": sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))[:10],
    }}))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Map: count the words of one text file; print {"file", "words", "counts"} as JSON.

Usage: count_words.py FILE
"""

import json
import re
import sys
from collections import Counter


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: count_words.py FILE")
    with open(sys.argv[1], encoding="utf-8") as f:
        words = re.findall(r"[a-z']+", f.read().lower())
    print(json.dumps({"file": sys.argv[1], "words": len(words), "counts": Counter(words)}))


if __name__ == "__main__":
    main()

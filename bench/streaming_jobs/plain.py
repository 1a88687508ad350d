"""Plain Python: the floor every system is compared with (one loop, one dict).

    python plain.py SRC DEST     # DEST gets one JSON [path, count] line per path
"""

import json
import sys


def main(src: str, dest: str) -> None:
    counts: dict[str, int] = {}
    with open(src, encoding="utf-8") as f:
        for line in f:
            fields = line.split(",", 5)
            if fields[4] == "500":
                counts[fields[3]] = counts.get(fields[3], 0) + 1
    with open(dest, "w", encoding="utf-8") as out:
        for path, n in counts.items():
            out.write(json.dumps([path, n]) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

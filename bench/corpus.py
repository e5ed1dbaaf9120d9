"""Real text for benchmarks and the demo: paragraphs of the Python documentation sources
(Debian package python3.11-doc), written as JSONL or Parquet with `id`, `doc` and `text`.

    python bench/corpus.py OUT.{jsonl,parquet} [--limit N] [--repeat R]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SOURCES = Path("/usr/share/doc/python3.11/html/_sources")
BUNDLED = Path(__file__).resolve().parent.parent / "jobs" / "data" / "pydocs.jsonl"


def passages(limit: int | None = None, min_chars: int = 80) -> list[dict[str, str]]:
    """Paragraphs of the Python docs; where python3.11-doc is not installed (a GPU machine),
    the 2,000 of them bundled in jobs/data/pydocs.jsonl, said on stderr."""
    if not SOURCES.is_dir():
        print(f"{SOURCES} not found (apt-get install python3.11-doc): using {BUNDLED}",
              file=sys.stderr)
        rows = [json.loads(line) for line in BUNDLED.read_text().splitlines()]
        return rows[:limit] if limit else rows
    out = []
    for path in sorted(SOURCES.rglob("*.rst.txt")):
        doc = str(path.relative_to(SOURCES)).removesuffix(".rst.txt")
        for number, para in enumerate(re.split(r"\n\s*\n", path.read_text(errors="replace"))):
            text = " ".join(para.split())
            if len(text) >= min_chars and not text.startswith(("..", "===", "---", "***")):
                out.append({"id": f"{doc}#{number}", "doc": doc, "text": text})
                if limit and len(out) >= limit:
                    return out
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=1, help="repeat the corpus R times")
    parser.add_argument("--row-group-size", type=int, default=10_000)
    args = parser.parse_args()
    rows = passages(args.limit)
    if args.repeat > 1:
        rows = [{**r, "id": f"{r['id']}~{k}"} for k in range(args.repeat) for r in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), args.out, row_group_size=args.row_group_size)
    else:
        args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} passages -> {args.out}")


if __name__ == "__main__":
    main()

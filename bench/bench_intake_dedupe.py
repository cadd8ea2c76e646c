"""The ingestion intake's near-duplicate check at 128 and 256 MinHash permutations.

Ingestion used 128 permutations and the pipeline 256; both now share
``pipeline.dedupe.NearDuplicateIndex`` with the pipeline's 256. This measures what that
costs per item, side by side in one run: for each ``num_perm``, every article's
signature, its LSH query (verified on the full signature) and its insertion, in the
order the intake does them, over the same Reuters articles. Near copies found are
reported too (more permutations = a tighter similarity estimate).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_intake_dedupe.py --articles 3000

Writes ``bench/results/intake_dedupe.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.collect import read_reuters  # noqa: E402
from pipeline.dedupe import NearDuplicateIndex  # noqa: E402
from pipeline.settings import Paths  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def intake_pass(articles, num_perm: int) -> dict:
    """Signature, query and insert per article, as ``ingestion.intake.Intake`` does."""
    index = NearDuplicateIndex(0.8, num_perm)
    near = 0
    started = time.perf_counter()
    for key, article in enumerate(articles):
        minhash = index.signature(article)
        if minhash is None:
            continue
        if index.nearest(minhash) is not None:
            near += 1
            continue
        index.add(key, minhash)
    seconds = time.perf_counter() - started
    return {"num_perm": num_perm, "articles": len(articles), "seconds": round(seconds, 3),
            "ms_per_article": round(1000 * seconds / len(articles), 3), "near_copies": near,
            "bands_x_rows": [index.lsh.b, index.lsh.r]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--articles", type=int, default=3000, help="Reuters articles to take")
    parser.add_argument("--repeats", type=int, default=3, help="passes per setting (best kept)")
    parser.add_argument("--out", type=Path, default=RESULTS / "intake_dedupe.json")
    args = parser.parse_args()

    articles = read_reuters(Paths().reuters_dir, limit=args.articles).articles
    runs = {}
    for repeat in range(args.repeats):
        for num_perm in (128, 256):  # interleaved: load changes hit both alike
            result = intake_pass(articles, num_perm)
            best = runs.get(num_perm)
            if best is None or result["seconds"] < best["seconds"]:
                runs[num_perm] = result
    report = {
        "benchmark": "intake near-duplicate check", "runs": list(runs.values()),
        "ratio_256_over_128": round(runs[256]["seconds"] / runs[128]["seconds"], 2),
        "load_average": os.getloadavg(), "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

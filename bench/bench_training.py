"""Training speed of LoRA SFT variants, side by side: seconds per optimiser step.

Each variant is the same training config with some fields changed (``--variant
name:field=value,field=value``). Variants run in turns, round after round (A B C, A B C,
...), each a real ``train_lora`` run of ``--steps`` optimiser steps on the same articles,
published to a throw-away registry; the first step of every run is warm-up and not
counted. The JSON has every step time, the median per variant, and each variant's median
relative to the first variant's (a ratio measured in one run, on one machine)::

    .venv/bin/python bench/bench_training.py --config train/configs/demo.yaml \\
        --variant trl-default:gradient_checkpointing=true \\
        --variant production:gradient_checkpointing=false \\
        --steps 4 --rounds 2 --out bench/results/training/3.json

Keep the machine quiet while it runs: two cores shared with anything else make the
ratio meaningless.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.config import apply_overrides, derive_config, load_config  # noqa: E402


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``name:field=value,field=value`` -> (name, ["field=value", ...]); a comma inside
    ``[...]`` belongs to a list value (``loss_type=[sigmoid,sft]``)."""
    name, sep, fields = text.partition(":")
    if not sep or not name:
        raise argparse.ArgumentTypeError(
            f"variant {text!r} is not of the form name:field=value,... (fields may be empty)")
    return name, [f for f in re.split(r",(?![^\[]*\])", fields) if f]


def step_timer():
    """A trainer callback that records the wall time of every optimiser step."""
    from transformers.trainer_callback import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []
            self._start = None

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self._start)

    return StepTimer()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="training config (YAML)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="FIELD=VALUE", help="override for every variant")
    parser.add_argument("--variant", dest="variants", action="append", type=parse_variant,
                        required=True, metavar="NAME:FIELD=VALUE,...",
                        help="a variant (the first is the reference of the ratios)")
    parser.add_argument("--steps", type=int, default=5, help="optimiser steps per run (>= 2)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of every variant")
    parser.add_argument("--out", type=Path, required=True, help="JSON result file")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first step is warm-up)")

    from train.trainer import RunContext
    from train.lora import train_lora

    base = load_config(args.config, args.overrides)
    times: dict[str, list[float]] = {name: [] for name, _ in args.variants}
    with tempfile.TemporaryDirectory(prefix="bench-training-") as registry:
        for round_ in range(args.rounds):
            for name, fields in args.variants:
                config = derive_config(base, **apply_overrides({}, [
                    *fields, f"max_steps={args.steps}", "validation_days=null",
                    f"registry={registry}"]))
                timer = step_timer()
                print(f"round {round_ + 1}/{args.rounds}: {name}", flush=True)
                train_lora(config, RunContext(callbacks=[timer]))
                times[name] += timer.seconds[1:]
                print(f"  {statistics.median(timer.seconds[1:]):.2f} s/step", flush=True)
    reference = statistics.median(times[args.variants[0][0]])
    result = {
        "command": " ".join(sys.argv),
        "machine": platform.processor() or platform.machine(),
        "config": str(args.config), "overrides": args.overrides,
        "steps_per_run": args.steps, "rounds": args.rounds,
        "variants": {
            name: {"fields": fields, "step_seconds": [round(t, 3) for t in times[name]],
                   "median_s_per_step": round(statistics.median(times[name]), 3),
                   "speedup_vs_first": round(reference / statistics.median(times[name]), 3)}
            for name, fields in args.variants},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, v in result["variants"].items():
        print(f"{name:>24}: {v['median_s_per_step']:.2f} s/step  x{v['speedup_vs_first']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

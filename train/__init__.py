"""Training, evaluation and the adapter registry.

Owns: one flat module per method (``lora.py``, ``loraplus.py``, ``dpo.py``,
``rlhf.py``, QLoRA through ``lora.py``) over their typed configs (``config.py``), Ray
jobs (``jobs.py``), the adapter registry (``registry.py``) and its typed manifest
(``manifest.py``), the classifier over its backends (``classifier.py``,
``backends.py``: vLLM through the ``openai`` client, in-process transformers + peft),
which evaluation uses and serving serves, evaluation (``evaluate.py``), the method
comparison (``experiment.py``) and the ``signals model|train|eval|experiment|adapters``
commands (``cli.py``, added to ``signals`` by ``signals/cli.py``).

May import: ``pipeline`` and ``train``. Never ``serve`` or ``ingestion``.
"""

"""Training, evaluation and the adapter registry.

Owns: one flat module per method (``lora.py``, ``loraplus.py``, ``dpo.py``,
``rlhf.py``, QLoRA through ``lora.py``) over their typed configs (``config.py``), Ray
jobs (``jobs.py``), the adapter registry (``registry.py``) and its typed manifest
(``manifest.py``), the classifier over its backends (``classifier.py``,
``backends.py``: vLLM through the ``openai`` client, in-process transformers + peft),
which evaluation uses and serving serves, evaluation (``evaluate.py``) and the method comparison (``experiment.py``).

May import: ``pipeline`` and ``train``. Never ``serve`` or ``ingestion``.
"""

"""Training and evaluation: what makes and judges adapter versions.

Owns: one flat module per method (``lora.py``, ``loraplus.py``, ``dpo.py``,
``rlhf.py``, QLoRA through ``lora.py``) over their typed configs (``config.py``), Ray
jobs (``jobs.py``), the base model's preparation (``base_model.py``), the ensemble fit
(``ensemble.py``), evaluation (``evaluate.py``), the method comparison
(``experiment.py``) and the ``signals model|train|eval|experiment|adapters`` commands
(``cli.py``, added to ``signals`` by ``signals/cli.py``). The versions it publishes, and
the classifier that scores them, are ``classify``'s.

May import: ``pipeline``, ``classify`` and ``train``. Never ``serve`` (its sibling) or
``ingestion``.
"""

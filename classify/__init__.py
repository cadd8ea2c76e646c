"""The served model: what turns an article into a calibrated P(signal), wherever it runs.

Owns: the classifier over its backends (``classifier.py``; ``backends.py``: vLLM through
the ``openai`` client, in-process transformers + peft), the adapter registry
(``registry.py``: versions, aliases, scaled variants in ``variants.py``) and its typed
manifest (``manifest.py``), calibration, thresholds, label shift and the ensemble's
combination (``calibration.py``), fitting a version's calibration on its validation
window (``validation.py``) and the lexical model an ensemble version serves
(``lexical.py``).

May import: only ``pipeline`` and ``classify``. None of it trains: ``train`` (which
publishes versions) and ``serve`` (which serves them) both sit above it as siblings,
and ``ingestion`` reads it for label shift and the backtest's lexical reference.
"""

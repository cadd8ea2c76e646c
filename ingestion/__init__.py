"""The ingestion service: polls and accepts items, classifies them through the API, stores
predictions, joins feedback, and exports online quality, drift and a replay feed.

Owns: the service and its HTTP app, its SQLite/SQL store (``store.py`` over the tables
of ``schema.py``), drift rules, online precision/recall, the replay feed, its config
and the ``signals ingest`` commands.
May import: ``pipeline`` (article contract, readers, dedupe, labels), ``classify``
(calibration, label shift, the registry, the lexical reference) and ``serve`` (the
API's request and response bodies, the shared HTTP error shape); not ``train``: it
starts training jobs by their command, not by importing training code. Nothing below imports this package; only the
``signals`` command (``signals/cli.py``), right of it, adds its commands (``cli.py``).
"""

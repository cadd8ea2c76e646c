"""The ``signals`` command: the composition root, right of every other package.

Owns: the entry point (``cli.py``; ``python -m signals`` or the ``signals`` script), its
logging set-up, its environment defaults, how it reports a user's error, and the demo
(``demo.py``: it trains, evaluates and serves, so it sits above all three); each
package's commands stay in that package (``pipeline/data_cli.py``, ``train/cli.py``,
``serve/cli.py``, ``ingestion/cli.py``), each with a ``register(commands)``.

May import: ``pipeline``, ``classify``, ``train``, ``serve`` and ``ingestion``. Nothing in the product
imports this package (``tests/test_layout.py`` checks it), so composing every command here
sends no import back against the direction.
"""

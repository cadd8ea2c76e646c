"""Everything offline about data: sources -> normalise -> dedupe -> stages -> datasets.

Owns the contract every other package imports: the article record (``article.py``), the
prompt and label tokens (``prompt.py``: the only place an article becomes a prompt), the
readers of feeds, e-mail and files (``sources.py``: the result they all return;
``feeds.py``, ``emails.py``, ``imap.py``, ``records.py``; ``html_text.py``), the link
stage (``links.py`` over ``link_settings.py``; link lists and newsletter links:
``link_sources.py``), what every fetch of a stranger's URL shares (``egress.py``: where it
may connect; ``fetch_limits.py``: how much of the answer is read, and for how long;
``politeness.py``: ``Retry-After`` and request spacing), the one near-duplicate test
(``dedupe.py``), the stage interface
(``stage.py``), the dataset build (``build.py``, step by step, over ``build_config.py``:
its settings; ``collect.py``: reading sources; ``normalise.py``; ``stage_runner.py``:
the optional stages, cached; ``views.py``: training rows and their files), dataset
directories (``dataset.py``) and the ``signals data`` commands (``data_cli.py``, added
to ``signals`` by ``signals/cli.py``).

May import: only ``pipeline`` itself (and third-party libraries). It is the lowest
layer: ``classify``, ``train``, ``serve`` and ``ingestion`` import it, never the other
way.
"""

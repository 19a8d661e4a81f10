"""Datasets: multi-scenario collection (``collect``, with its config and pre-start checks in ``collect_config``),
the on-disk dataset (``dataset``: its writer and reader; ``checks``: its file and manifest checks, which with
``dataset`` are the only code that knows its files) and the sequence + context sampler (``sampler``)."""

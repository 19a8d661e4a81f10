"""Datasets: multi-scenario collection (``collect``), the on-disk dataset (``dataset``: the only code that knows
its files) and the sequence + context sampler (``sampler``)."""

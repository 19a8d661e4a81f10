"""MrCoM model core: configs, networks, the world models and their registry, the imagination steps, losses
and Triton kernels (PyTorch only; ``errors`` and ``files`` are plain Python for every layer).

Nothing here knows about environments, files or the CLI: ``mrcom_train`` and ``mrcom_export`` import
this package, never the other way round.
"""

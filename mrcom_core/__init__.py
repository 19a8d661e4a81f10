"""MrCoM model core: configs, networks, latent dynamics, losses and Triton kernels (PyTorch only).

Nothing here knows about environments, files or the CLI: ``mrcom_train`` and ``mrcom_export`` import
this package, never the other way round.
"""

"""MrCoM model core: configs, networks, the world models and their registry, the imagination steps, losses
and Triton kernels (PyTorch), plus :mod:`mrcom_core.io`, the standard-library-only file plumbing (atomic
writes, locks, snapshots, output folders, memory checks) and :mod:`mrcom_core.errors`, which every layer uses.

Nothing here knows about environments, datasets or the CLI: ``mrcom_train`` and ``mrcom_export`` import this
package, never the other way round.
"""

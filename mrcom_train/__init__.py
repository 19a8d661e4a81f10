"""MrCoM training side, in sub-packages that follow the data:

``scenarios`` (the multi-scenario suite) → ``datasets`` (collect, dataset, sampler) → ``training`` (trainer,
checkpoints, open-loop error) → [``mrcom_export``: graphs, runtime] → ``rollout`` (an export's error from
dataset prompts) and ``rl`` (SAC, scenario adaptation) → ``experiments`` (``mrcom reproduce``), with the
``mrcom`` CLI (``cli``) on top. ``workers`` and ``metrics_log`` are shared plumbing.

Everything here may touch environments, files and processes; the model itself lives in ``mrcom_core``.
Importing this package settles whether Triton is imported, before dm_control can load a GL library (see
:func:`mrcom_core.kernels.settle_triton_import`): with ``MUJOCO_GL=egl`` the two LLVMs would clash.
"""

from mrcom_core.kernels import settle_triton_import

__version__ = "0.1.0"

settle_triton_import()

"""MrCoM export stage and torch-free rollout runtime, installed as ``mrcom_export``.

* :mod:`.exporter` (torch) freezes a world model (and optionally a SAC policy) into ONNX and TorchScript
  graphs (:mod:`.graphs`) plus ``manifest.json``;
* :mod:`.runtime` runs batched imagined rollouts from an export with numpy and ONNX Runtime only;
  :mod:`.vector_env` wraps it as a Gymnasium ``VectorEnv``; :mod:`.bundle` is the array format the C++
  examples share.

Importing this package, the runtime, the vector env or the bundle never imports torch.
"""

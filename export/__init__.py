"""MrCoM export stage and torch-free rollout runtime, installed as ``mrcom_export``.

The exporters (ONNX, TorchScript) and the runtime (numpy + onnxruntime only) land here with the export
issue; this package must stay importable without torch.
"""

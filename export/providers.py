"""ONNX Runtime execution providers: checking a requested list and choosing the default one."""

from __future__ import annotations

import onnxruntime as ort

from .manifest import ExportError

CUDA_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")  # outputs bound in CUDA memory


def provider_name(provider) -> str:
    return provider[0] if isinstance(provider, tuple | list) and provider else provider


def check_providers(providers) -> list:
    """``providers`` (names, or ``(name, options)`` pairs as ONNX Runtime takes them) as a list, refused with
    one line naming the first that this ONNX Runtime build does not offer."""
    if isinstance(providers, str) or not isinstance(providers, list | tuple):
        raise ExportError(f"providers must be a list of ONNX Runtime provider names, got {providers!r}")
    available = ort.get_available_providers()
    for provider in providers:
        name = provider_name(provider)
        if not isinstance(name, str) or name not in available:
            raise ExportError(f"ONNX Runtime provider {name!r} is not available here; available: "
                              f"{', '.join(available)}")
    return list(providers)


def default_providers() -> list[str]:
    """CUDA when onnxruntime-gpu sees a GPU, else CPU."""
    available = ort.get_available_providers()
    return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]

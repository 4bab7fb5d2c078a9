"""CUDA backend: Triton kernels from ``fastprm.kernels`` (imported on first use, so Triton stays optional)."""

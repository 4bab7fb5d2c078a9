"""Triton kernels of fastprm (the CUDA path)."""

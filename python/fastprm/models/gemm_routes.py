"""GEMM routes: how a backbone's matmuls run on CPU. Which one is fastest depends on the machine, so
:mod:`fastprm.tuning` measures them; this module only runs the one it is given.

- ``torch``: torch's own kernels (its BLAS for fp32, oneDNN for bf16).
- ``onednn``: every ``nn.Linear`` through oneDNN with weights packed once (:mod:`.onednn_linear`).
- ``fp32``: bf16 matmuls as fp32 GEMMs over the bf16 values (:mod:`.cpu_bf16`), for CPUs whose bf16 GEMM is a
  slow generic kernel (no AVX512-BF16 / AMX).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from torch import nn

from ..tuning.plan import GEMM_ROUTES
from . import onednn_linear
from .cpu_bf16 import Fp32Matmuls, native_bf16


def default_gemm_route(device: torch.device, dtype: torch.dtype) -> str:
    """The route without measurement: ``fp32`` for bf16 on a CPU without native bf16 (its bf16 GEMM was
    measured about 7x slower than fp32 on an AVX2 AMD EPYC Zen 3), else ``torch``."""
    if dtype == torch.bfloat16 and device.type == "cpu" and not native_bf16():
        return "fp32"
    return "torch"


def available_gemm_routes(device: torch.device, dtype: torch.dtype) -> list[str]:
    """The routes that can run a ``dtype`` model on ``device`` here."""
    if device.type != "cpu":
        return ["torch"]
    routes = ["torch"]
    if onednn_linear.available(dtype):
        routes.append("onednn")
    if dtype == torch.bfloat16:
        routes.append("fp32")
    return routes


def check_gemm_route(route: str, device: torch.device, dtype: torch.dtype) -> None:
    """Raises ValueError naming the route when it is unknown or cannot run ``dtype`` on ``device``."""
    if route not in GEMM_ROUTES:
        raise ValueError(f"gemm_route must be one of {', '.join(GEMM_ROUTES)}, got {route!r}")
    if route not in available_gemm_routes(device, dtype):
        raise ValueError(f"gemm_route {route!r} cannot run a {dtype} model on {device} here")


def routed_linears(model: nn.Module) -> list[nn.Linear]:
    """The layers the ``onednn`` route runs: plain ``nn.Linear`` (not subclasses such as LoRA layers, whose
    forward does more than one GEMM)."""
    return [m for m in model.modules() if type(m) is nn.Linear]


@contextlib.contextmanager
def route_gemms(model: nn.Module, route: str) -> Iterator[None]:
    """Within this context ``model``'s matmuls take ``route`` (see the module docstring)."""
    if route == "fp32":
        with Fp32Matmuls():
            yield
        return
    if route != "onednn":
        yield
        return
    layers = routed_linears(model)
    for layer in layers:
        layer.forward = functools.partial(onednn_linear.linear, layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward

"""The fused token log-probability op: log p(target) under softmax(hidden @ W.T / T) without [N, V] logits.

Layout, in the one direction that data and imports flow:

- ``api.py``: the documented public function (:func:`fastprm.ops.token_logprobs`) and its argument checks;
- ``schema.py``: the torch.library ops with their fake and autograd implementations, and the eager CPU route
  around the dispatcher;
- ``chunked.py``: the loop every device shares: vocabulary and row chunks, each a torch GEMM (in the call's
  ``gemm_dtype``) into one reused float32 tile, then a per-tile row kernel (online log-sum-exp and target
  gather forward, d/dlogits backward);
- ``cpu.py`` (the row kernels as torch ops) and ``cuda.py`` (Triton row kernels in ``fastprm.kernels``): the
  per-device row kernels;
- ``reference.py``: the pure-PyTorch reference (spec and test oracle), full [N, V] logits, and what
  ``gemm_dtype`` means.
"""

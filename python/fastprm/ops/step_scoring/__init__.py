"""The fused step-scoring op: find step rows, project them through the head, reduce per sequence.

Layout, in the one direction that data and imports flow:

- ``api.py``: the documented public functions (:func:`fastprm.ops.score_steps`, :func:`fastprm.ops.find_steps`)
  and their argument checks;
- ``schema.py``: the torch.library ops with their fake and autograd implementations, and the eager CPU route
  around the dispatcher;
- ``cpu.py`` (C++ in ``csrc/``) and ``cuda.py`` (Triton in ``fastprm.kernels``): the per-device backends;
- ``reference.py``: the pure-PyTorch reference (spec, test oracle and fallback); ``grad.py``: the gradient
  w.r.t. the step logits that every backend shares; ``result.py``: :class:`StepScores`.

What every backend and the Triton launchers share (step-layout checks, output dtype and allocator) is
``fastprm.kernels.contract``, a leaf next to the launchers that imports only torch.
"""

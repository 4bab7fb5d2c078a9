"""Triton kernels of fastprm (the CUDA path), and ``contract``: what they share with every other backend.

Nothing here imports from the rest of fastprm: the backends in ``fastprm.ops`` import these modules, never the
other way round. Importing this package does not import Triton (only ``score_steps`` does).
"""

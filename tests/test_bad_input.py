"""Malformed input raises a ValueError naming the argument; never a crash, a hang or garbage."""

from __future__ import annotations

import pytest
import torch

from batches import SEP, packed_ids
from fastprm.ops import score_steps, score_steps_reference

H = 8


def find_mode(**overrides):
    input_ids, cu = packed_ids([[1, SEP, 2], [SEP, 3, SEP]])
    kw = dict(
        hidden=torch.randn(6, H), weight=torch.randn(2, H), bias=None,
        input_ids=input_ids, cu_seqlens=cu, sep_token_ids=SEP,
    )  # fmt: skip
    kw.update(overrides)
    return kw


def given_mode(**overrides):
    kw = dict(
        hidden=torch.randn(6, H), weight=torch.randn(2, H), bias=None,
        step_index=torch.tensor([1, 3, 5]), cu_steps=torch.tensor([0, 1, 3]),
    )  # fmt: skip
    kw.update(overrides)
    return kw


def rows_mode(**overrides):
    kw = dict(hidden=torch.randn(3, H), weight=torch.randn(2, H), bias=None, cu_steps=torch.tensor([0, 1, 3]))
    kw.update(overrides)
    return kw


BAD_CALLS = [
    ("hidden", find_mode(hidden=torch.randn(6, H).long())),
    ("hidden", find_mode(hidden=torch.randn(6, H, 1))),
    ("hidden", find_mode(hidden=[[0.0] * H] * 6)),
    ("hidden", find_mode(hidden=torch.randn(6, H).to_sparse())),
    ("weight", find_mode(weight=torch.randn(3, H))),
    ("weight", find_mode(weight=torch.randn(2, H + 1))),
    ("weight", find_mode(weight=torch.randn(H))),
    ("bias", find_mode(bias=torch.randn(3))),
    ("bias", find_mode(bias=torch.randn(2).long())),
    ("positive_class", find_mode(positive_class=2)),
    ("threshold", find_mode(threshold="high")),
    ("input_ids", find_mode(input_ids=torch.zeros(6))),
    ("input_ids", find_mode(input_ids=torch.zeros(5, dtype=torch.long))),
    ("cu_seqlens", find_mode(cu_seqlens=torch.tensor([1, 3, 6]))),
    ("cu_seqlens", find_mode(cu_seqlens=torch.tensor([0, 4, 3, 6]))),
    ("cu_seqlens", find_mode(cu_seqlens=torch.tensor([0, 3, 5]))),
    ("cu_seqlens", find_mode(cu_seqlens=torch.tensor([0, 3, 7]))),
    ("cu_seqlens", find_mode(cu_seqlens=torch.tensor([], dtype=torch.long))),
    ("cu_seqlens", find_mode(cu_seqlens=torch.tensor([0.0, 6.0]))),
    ("sep_token_ids", find_mode(sep_token_ids=[])),
    ("sep_token_ids", find_mode(sep_token_ids="x")),
    ("sep_token_ids", find_mode(sep_token_ids=torch.tensor([1.5]))),
    ("step_index", given_mode(step_index=torch.tensor([1, 3, 6]))),
    ("step_index", given_mode(step_index=torch.tensor([1, 3, -1]))),
    ("step_index", given_mode(step_index=torch.tensor([1, 5, 3]))),
    ("step_index", given_mode(step_index=torch.tensor([1, 3, 3]))),
    ("step_index", given_mode(step_index=torch.tensor([1.0, 3.0, 5.0]))),
    ("cu_steps", given_mode(cu_steps=torch.tensor([0, 1, 4]))),
    ("cu_steps", given_mode(cu_steps=torch.tensor([0, 2, 1, 3]))),
    ("cu_steps", given_mode(cu_steps=torch.tensor([1, 3]))),
    ("hidden", rows_mode(hidden=torch.randn(3, H).long())),
    ("cu_steps", rows_mode(cu_steps=torch.tensor([0, 1, 2]))),  # ends before the last row
    ("cu_steps", rows_mode(cu_steps=torch.tensor([0, 1, 4]))),  # ends past it
    ("cu_steps", rows_mode(cu_steps=torch.tensor([1, 3]))),
    ("cu_steps", rows_mode(cu_steps=torch.tensor([0, 2, 1, 3]))),
    ("cu_steps", rows_mode(cu_steps=torch.tensor([], dtype=torch.long))),
    ("cu_steps", rows_mode(cu_steps=torch.tensor([0.0, 3.0]))),
    ("cu_steps", rows_mode(cu_steps=torch.tensor([[0, 3]]))),
    ("either", find_mode(step_index=torch.tensor([1]))),
    ("either", find_mode(cu_steps=torch.tensor([0, 1, 3]))),
    ("either", given_mode(input_ids=torch.zeros(6, dtype=torch.long))),
    ("either", find_mode(cu_seqlens=None)),
    ("either", rows_mode(input_ids=torch.zeros(3, dtype=torch.long))),
    ("either", rows_mode(cu_seqlens=torch.tensor([0, 3]))),
    ("either", rows_mode(sep_token_ids=SEP)),
    ("either", given_mode(cu_steps=None)),  # step_index alone
    ("either", rows_mode(cu_steps=None)),  # no steps named at all
]


@pytest.mark.parametrize(
    ("argument", "kwargs"), BAD_CALLS, ids=[f"{a}-{i}" for i, (a, _) in enumerate(BAD_CALLS)]
)
def test_bad_input_names_the_argument(cpu_isa, argument, kwargs):
    with pytest.raises(ValueError, match=argument):
        score_steps(**kwargs)


def test_rows_mode_cu_steps_must_end_at_the_row_count(cpu_isa):
    """Rows mode: hidden's rows are the steps, so cu_steps ends at hidden.shape[0]; the error says so."""
    for cu_steps in (torch.tensor([0, 1, 2]), torch.tensor([0, 1, 4], dtype=torch.int32)):
        with pytest.raises(ValueError, match=r"cu_steps must end at hidden.shape\[0\] = 3, got"):
            score_steps(**rows_mode(cu_steps=cu_steps))


def test_extension_rechecks_what_it_dereferences():
    """Called directly, past the Python checks, the C++ entry points still raise a ValueError naming the bad
    argument instead of reading out of bounds."""
    native = pytest.importorskip("fastprm._C")
    hidden, weight, si, cu = (
        torch.randn(6, H),
        torch.randn(2, H),
        torch.tensor([1, 3, 5]),
        torch.tensor([0, 1, 3]),
    )
    forward_calls = [
        ("hidden", (hidden.long(), weight, None, si, cu, 1, 0.5)),
        ("hidden", (hidden[None], weight, None, si, cu, 1, 0.5)),
        ("weight", (hidden, torch.randn(3, H), None, si, cu, 1, 0.5)),
        ("weight", (hidden, torch.randn(2, H + 1), None, si, cu, 1, 0.5)),
        ("weight", (hidden, "w", None, si, cu, 1, 0.5)),
        ("bias", (hidden, weight, torch.randn(3), si, cu, 1, 0.5)),
        ("bias", (hidden, weight, torch.zeros(2, dtype=torch.long), si, cu, 1, 0.5)),
        ("step_index", (hidden, weight, None, torch.tensor([1, 3, 6]), cu, 1, 0.5)),
        ("step_index", (hidden, weight, None, torch.tensor([1, 5, 3]), cu, 1, 0.5)),
        ("step_index", (hidden, weight, None, si.int(), cu, 1, 0.5)),
        ("step_index", (hidden, weight, None, torch.tensor([1, 0, 3, 0, 5])[::2], cu, 1, 0.5)),
        ("cu_steps", (hidden, weight, None, si, torch.tensor([0, 1, 4]), 1, 0.5)),
        ("cu_steps", (hidden, weight, None, si, torch.tensor([], dtype=torch.long), 1, 0.5)),
        ("cu_steps", (hidden, weight, None, None, cu, 1, 0.5)),  # rows mode: must end at the 6 rows
        ("cu_steps", (hidden, weight, None, None, torch.tensor([0, 7, 6]), 1, 0.5)),
        ("positive_class", (hidden, weight, None, si, cu, 2, 0.5)),
    ]
    for argument, args in forward_calls:
        with pytest.raises(ValueError, match=argument):
            native.score_forward(*args)
    grad = torch.randn(3, 2)
    backward_calls = [
        ("grad_step_logits", (grad.double(), hidden, weight, si)),
        ("grad_step_logits", (grad[:2], hidden, weight, si)),
        ("grad_step_logits", (grad.T.contiguous().T, hidden, weight, si)),
        ("grad_step_logits", (grad, hidden, weight, None)),  # rows mode: [N, C] = [6, 2]
        ("step_index", (grad, hidden, weight, torch.tensor([1, 3, 6]))),
        ("weight", (grad, hidden, torch.randn(2, H + 1), si)),
    ]
    for argument, args in backward_calls:
        with pytest.raises(ValueError, match=argument):
            native.score_backward(*args)
    ids, seqs = torch.tensor([1, SEP, 2]), torch.tensor([0, 3])
    find_calls = [
        ("input_ids", (ids.float(), seqs, torch.tensor([SEP]))),
        ("cu_seqlens", (ids, torch.tensor([0, 2]), torch.tensor([SEP]))),
        ("sep_token_ids", (ids, seqs, torch.tensor([SEP], dtype=torch.int32))),
    ]
    for argument, args in find_calls:
        with pytest.raises(ValueError, match=argument):
            native.find_steps(*args)


def test_reference_rejects_the_same_step_layouts():
    """The reference (the spec, which checks values, not dtypes or ranks) rejects every bad step layout of
    integer vectors, in given and rows mode."""
    for argument, kwargs in BAD_CALLS:
        steps = kwargs.get("step_index"), kwargs.get("cu_steps")
        vectors = all(t.dim() == 1 and not t.is_floating_point() for t in steps if t is not None)
        if argument in ("step_index", "cu_steps") and vectors:
            with pytest.raises(ValueError, match=argument):
                score_steps_reference(kwargs["hidden"], kwargs["weight"], None, *steps)


def test_device_mismatch_is_named():
    kw = find_mode(weight=torch.randn(2, H, device="meta"))
    with pytest.raises(ValueError, match="weight"):
        score_steps(**kw)


def test_forced_isa_env_var_is_checked(tmp_path):
    import subprocess
    import sys

    env = {"FASTPRM_CPU_ISA": "sse9", "PATH": "/usr/bin:/bin"}
    code = "from fastprm.ops import score_steps"  # the first use of the op loads the extension
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "FASTPRM_CPU_ISA" in proc.stderr

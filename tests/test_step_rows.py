"""The last layer past its attention at the step rows only (fastprm.models.step_rows) equals the full forward
at those rows, and so do prompt-shared prefix caches."""

import pytest
import torch

from fastprm.models import CONVENTIONS, PRM
from fastprm.models.heads import LinearHead
from fastprm.models.step_rows import step_row_layer
from fastprm.packing import pack_rows, pad_rows

SMALL = dict(
    vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=128,
)  # fmt: skip
BACKBONES = {
    "qwen2": dict(model_type="qwen2", **SMALL),
    "llama": dict(model_type="llama", **SMALL),
    "mistral": dict(model_type="mistral", **SMALL),
    "qwen3": dict(model_type="qwen3", head_dim=8, **SMALL),
    # not a Llama-layout decoder layer: the full last layer runs
    "gpt2": dict(model_type="gpt2", vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=128),
}
ROWS = [[5, 9, 2, 7, 7, 1], [3], [4, 4, 8, 1, 2], [6, 2]]
# every step-row position kind: first token, last token, a length-1 row, a row without steps, all tokens
ENDS = [[0, 3, 5], [0], [], [0, 1]]


def _prm(name: str, dtype=torch.float32) -> PRM:
    torch.manual_seed(0)
    conv = CONVENTIONS["token-classification"]
    prm = PRM.from_config(BACKBONES[name], tokenizer=None, convention=conv, dtype=dtype)
    prm.head = LinearHead(32, 2).to(dtype)
    return prm.eval()


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("layout", ["padded", "packed", "one row"])
def test_step_rows_match_the_full_forward(name, layout):
    prm = _prm(name)
    assert (step_row_layer(prm.backbone) is None) == (name == "gpt2")
    if layout == "padded":
        batches = [pad_rows(ROWS, ENDS, pad_id=0)]
    elif layout == "packed":
        batches = [pack_rows(ROWS, ENDS)]
    else:
        batches = [pack_rows([r], [e]) for r, e in zip(ROWS, ENDS)]
    with torch.inference_mode():
        for b in batches:
            extra = {} if b.position_ids is None else {"position_ids": b.position_ids}
            full = prm.hidden_states(b.input_ids, b.attention_mask, **extra)
            full = full.reshape(-1, full.shape[-1])[b.step_index]
            got = prm.step_hidden_states(b.input_ids, b.step_index, b.attention_mask, **extra)
            assert got.shape == full.shape
            torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-5)
            # the layer is restored afterwards: a plain forward is a full forward again
            again = prm.hidden_states(b.input_ids, b.attention_mask, **extra)
            torch.testing.assert_close(again.reshape(-1, again.shape[-1])[b.step_index], full)


def test_step_rows_in_bf16():
    prm = _prm("qwen2", torch.bfloat16)
    b = pack_rows(ROWS, ENDS)
    with torch.inference_mode():
        full = prm.hidden_states(b.input_ids, position_ids=b.position_ids)[0][b.step_index]
        got = prm.step_hidden_states(b.input_ids, b.step_index, position_ids=b.position_ids)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, full, rtol=0, atol=0)


@pytest.mark.parametrize("rest_length", [5, 150])  # one block of queries, or several and a partial one
@pytest.mark.parametrize("name", ["qwen2", "llama", "qwen3"])
def test_a_prefix_cache_gives_the_hidden_states_of_the_whole_row(name, rest_length):
    from fastprm.models.varlen_attention import PREFIX_QUERY_BLOCK

    assert rest_length % PREFIX_QUERY_BLOCK and (
        rest_length < PREFIX_QUERY_BLOCK or rest_length > 2 * PREFIX_QUERY_BLOCK
    )
    prm = _prm(name)
    prefix = [5, 9, 2, 7]
    rest = torch.randint(0, 50, (rest_length,), generator=torch.Generator().manual_seed(0)).tolist()
    with torch.inference_mode():
        whole = prm.hidden_states(torch.tensor([prefix + rest]))[0, len(prefix) :]
        cache = prm.prefix_cache(torch.tensor([prefix]))
        for _ in range(2):  # the cache is left as it was, so it serves row after row
            got = prm.hidden_states(torch.tensor([rest]), prefix=cache)[0]
            torch.testing.assert_close(got, whole, rtol=1e-5, atol=1e-5)
            assert cache.get_seq_length() == len(prefix)
        rows = torch.tensor([0, 4, rest_length - 1])
        got = prm.step_hidden_states(torch.tensor([rest]), rows, prefix=cache)
        torch.testing.assert_close(got, whole[rows], rtol=1e-5, atol=1e-5)


def test_a_prefix_cache_extends_a_copy_of_the_cache_before_it():
    """prefix_cache(ids, after=cache): the cache of a header, then of a problem on top of a copy of it; works
    outside inference mode too (the header cache is never changed, so it serves every problem)."""
    prm = _prm("qwen2")
    header, problem, rest = [5, 9, 2], [7, 7, 1], [3, 3, 8, 4]
    whole = prm.hidden_states(torch.tensor([header + problem + rest]))[0, -len(rest) :].detach()
    header_cache = prm.prefix_cache(torch.tensor([header]))
    for _ in range(2):
        cache = prm.prefix_cache(torch.tensor([problem]), after=header_cache)
        assert header_cache.get_seq_length() == len(header) and cache.get_seq_length() == len(
            header + problem
        )
        got = prm.hidden_states(torch.tensor([rest]), prefix=cache)[0]
        torch.testing.assert_close(got, whole, rtol=1e-5, atol=1e-5)


PROBLEMS = ["What is 2 + 3?", "How many eggs are left after three were eaten?", "Is 7 prime?"]
SOLUTIONS = [
    ["2 + 3 = 5.", "The answer is 5."],
    ["12 - 3 = 9.", "So 9 eggs."],
    ["Yes, 7 is prime."],
    ["2 + 3 = 6.", "The answer is 6."],
    ["7 = 7 x 1, so it is prime."],
]
# Problems of the rows above, repeated and interleaved as best-of-N inputs are.
ROW_PROBLEMS = [PROBLEMS[0], PROBLEMS[1], PROBLEMS[2], PROBLEMS[0], PROBLEMS[2]]


def test_rows_of_one_problem_share_its_prompt_and_score_the_same(qwen_prm_dir, monkeypatch):
    prm = PRM.from_pretrained(qwen_prm_dir, dtype=torch.float32)
    plain = prm.score(ROW_PROBLEMS, SOLUTIONS, share_prefix=False)
    runs = []  # (tokens run, tokens of the cache they follow)
    cache_of = prm.prefix_cache

    def counted(ids, after=None, **options):
        runs.append((ids.shape[1], 0 if after is None else after.get_seq_length()))
        return cache_of(ids, after=after, **options)

    monkeypatch.setattr(prm, "prefix_cache", counted)
    shared = prm.score(ROW_PROBLEMS, SOLUTIONS)
    header, *problems = runs
    assert header[0] > 20 and header[1] == 0  # system prompt and chat header, once
    assert len(problems) == 3 and all(after == header[0] for _, after in problems)  # each problem once
    for a, b in zip(plain, shared):
        torch.testing.assert_close(
            torch.tensor(b.step_scores), torch.tensor(a.step_scores), atol=1e-5, rtol=0
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_row_scores_the_same_bits_alone_and_in_any_batch(qwen_prm_dir, dtype):
    prm = PRM.from_pretrained(qwen_prm_dir, dtype=dtype)
    together = prm.score(ROW_PROBLEMS, SOLUTIONS)
    reversed_ = prm.score(ROW_PROBLEMS[::-1], SOLUTIONS[::-1])[::-1]
    for i, (problem, steps) in enumerate(zip(ROW_PROBLEMS, SOLUTIONS)):
        alone = prm.score([problem], [steps])[0]
        assert alone.step_scores == together[i].step_scores == reversed_[i].step_scores


def test_a_second_thread_is_refused_while_the_model_runs():
    """A forward swaps module methods of the backbone for its call: a second thread gets a clear error, not
    the first thread's layers; the first call's result is unchanged, and the model is free again after."""
    import threading

    prm = _prm("qwen2")
    b = pack_rows(ROWS, ENDS)
    kw = dict(position_ids=b.position_ids)
    with torch.inference_mode():
        want = prm.step_hidden_states(b.input_ids, b.step_index, **kw)
    inside, release, got = threading.Event(), threading.Event(), {}
    first_layer = prm.backbone.layers[0]
    original = type(first_layer).forward

    def held_forward(layer, *args, **kwargs):  # the first thread waits mid-forward
        if threading.current_thread().name == "first":
            inside.set()
            release.wait(10)
        return original(layer, *args, **kwargs)

    def first():
        with torch.inference_mode():
            got["first"] = prm.step_hidden_states(b.input_ids, b.step_index, **kw)

    type(first_layer).forward = held_forward
    try:
        thread = threading.Thread(target=first, name="first")
        thread.start()
        assert inside.wait(10)
        for call in (
            lambda: prm.step_hidden_states(b.input_ids, b.step_index, **kw),
            lambda: prm.hidden_states(b.input_ids, **kw),
            lambda: prm.prefix_cache(b.input_ids[:, :2]),
        ):
            with pytest.raises(RuntimeError, match="running in another thread"):
                call()
        release.set()
        thread.join(10)
    finally:
        type(first_layer).forward = original
    torch.testing.assert_close(got["first"], want, rtol=0, atol=0)
    with torch.inference_mode():  # free again, from any thread
        torch.testing.assert_close(prm.step_hidden_states(b.input_ids, b.step_index, **kw), want)

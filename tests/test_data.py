"""Training-data loading: every source format on the real samples, every validation rule on synthetic bad
rows, every container (JSONL, JSON, Parquet, in-memory rows, datasets.Dataset)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fastprm.data import (
    RecordDropped,
    StepExample,
    detect_format,
    from_math_shepherd,
    from_prm800k,
    from_prm800k_critic,
    from_processbench,
    from_trl,
    load_step_examples,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

GOOD = {"prompt": "1+1?", "completions": ["1+1=2.", "The answer is 2."], "labels": [True, False]}


def shared(*parts: str) -> Path:
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared real-data folder is not beside the project)")
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    """One line per row; a str row is written as it is and a bytes row as raw bytes (for non-UTF-8 lines)."""
    lines = [
        r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode() for r in rows
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


# -- real data -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "subset, rows, steps, all_correct",
    [
        ("gsm8k", 400, 2082, 193),
        ("math", 1000, 6505, 406),
        ("olympiadbench", 1000, 8819, 339),
        ("omnimath", 1000, 8291, 241),
    ],
)
def test_processbench_real(subset, rows, steps, all_correct):
    path = shared("processbench", f"{subset}.json")
    raw = json.loads(path.read_text())
    result = load_step_examples(path)
    assert (len(result.examples), sum(len(e.steps) for e in result.examples)) == (rows, steps)
    assert result.skipped == []
    assert sum(all(e.labels) for e in result.examples) == all_correct
    for row, ex in zip(raw, result.examples):
        first_error = row["label"]
        n = len(row["steps"])
        expected = [1.0] * n if first_error == -1 else [1.0] * first_error + [0.0] * (n - first_error)
        assert (ex.prompt, ex.steps, ex.labels) == (row["problem"], row["steps"], expected)
    truncated = load_step_examples(path, after_error="truncate").examples
    for row, ex in zip(raw, truncated):
        assert len(ex.steps) == (len(row["steps"]) if row["label"] == -1 else row["label"] + 1)
        assert ex.labels[-1] == (1.0 if row["label"] == -1 else 0.0)


def test_math_shepherd_real():
    path = shared("math_shepherd", "samples_math-shepherd.jsonl")
    examples = load_step_examples(path).examples
    assert [e.labels for e in examples] == [
        [1.0, 1.0, 1.0, 1.0, 0.0],
        [0.0, 0.0, 0.0],
        [0.0, 0.0],
        [0.0] * 5,
        [1.0, 0.0, 0.0, 0.0, 0.0],
        [0.0, 0.0],
        [0.0, 0.0, 0.0],
    ]
    assert [e.source_row for e in examples] == list(range(7))
    for ex in examples:
        assert ex.prompt.endswith("?") and "Step 1:" not in ex.prompt
        assert [s.split(":")[0] for s in ex.steps] == [f"Step {k}" for k in range(1, len(ex.steps) + 1)]
        assert not any("ки" in s for s in ex.steps)
    assert examples[0].steps[4].endswith("The answer is: 13520")


def test_prm800k_real_default_policy():
    path = shared("prm800k", "samples_prm800k.jsonl")
    result = load_step_examples(path)
    # line 5: finish_reason give_up; line 6: the initial screening record (generation -1).
    assert result.skipped == [
        (f"{path}:5", "finish_reason 'give_up'"),
        (f"{path}:6", "initial screening question (generation -1)"),
    ]
    assert [e.source_row for e in result.examples] == [0, 1, 2, 3]
    assert [len(e.steps) for e in result.examples] == [6, 7, 5, 7]
    # Phase 2 (line 2) stops at the first error; its second step is rated 0, positive by default.
    assert [e.labels for e in result.examples] == [[1.0] * 6, [1.0] * 6 + [0.0], [1.0] * 5, [1.0] * 7]
    records = [json.loads(line) for line in path.read_text().splitlines()]
    phase2 = result.examples[1]
    assert phase2.steps == records[1]["question"]["pre_generated_steps"][:7]
    # Line 1 step 2: every completion was rated -1, so the labeller's own step is followed.
    assert result.examples[0].steps[1] == records[0]["label"]["steps"][1]["human_completion"]["text"]


def test_prm800k_real_options():
    path = shared("prm800k", "samples_prm800k.jsonl")
    negative = load_step_examples(path, neutral="negative").examples
    assert negative[1].labels == [1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    skipped_neutral = load_step_examples(path, neutral="skip").examples
    assert skipped_neutral[1].labels == [1.0] * 5 + [0.0]
    assert negative[1].steps[1] not in skipped_neutral[1].steps
    everything = load_step_examples(path, skip_flagged=False, skip_screening=False)
    assert everything.skipped == []
    # The give_up record: 7 chosen steps and the labeller's step; the step after it has no completion.
    assert [len(e.steps) for e in everything.examples] == [6, 7, 5, 7, 8, 12]


def test_prm800k_alternatives_real():
    path = shared("prm800k", "samples_prm800k.jsonl")
    result = load_step_examples(path, alternatives=True)
    # Per record: the trajectory, then one example per rated completion not followed (5 + 4, 3, 6, 6).
    assert [e.source_row for e in result.examples] == [0] * 10 + [1] * 4 + [2] * 7 + [3] * 7
    assert sum(e.labels[-1] == 0.0 for e in result.examples) == 9
    # The phase 1 trajectories are all positive: their negatives are in the alternatives only.
    assert load_step_examples(path).examples[0].labels == [1.0] * 6
    assert result.examples[1].steps[:1] == result.examples[0].steps[:1]
    assert result.examples[1].labels == [1.0, 0.0]


def test_prm800k_critic_parquet_real():
    pytest.importorskip("pyarrow")
    path = shared("prm800k", "phase1_test.stepwise-critic.parquet")
    result = load_step_examples(path)
    assert (len(result.examples), len(result.skipped)) == (5339, 110)
    assert {reason for _, reason in result.skipped} == {"unrated candidate step"}
    assert sum(e.labels[-1] == 0.0 for e in result.examples) == 1970
    assert all(e.labels[:-1] == [1.0] * (len(e.steps) - 1) for e in result.examples)
    assert len(load_step_examples(path, neutral="skip").examples) == 5339 - 867
    # Lines 1 and 4 of the raw samples are phase 1 test records: their trajectory and alternatives are rows
    # of the Parquet file, which also has a row for every step the labeller followed (a proper prefix).
    raw = shared("prm800k", "samples_prm800k.jsonl")
    for line in (1, 4):
        record = json.loads(raw.read_text().splitlines()[line - 1])
        from_raw = {(tuple(e.steps), tuple(e.labels)) for e in from_prm800k(record, 0, alternatives=True)}
        from_parquet = {
            (tuple(e.steps), tuple(e.labels))
            for e in result.examples
            if e.prompt == record["question"]["problem"]
        }
        trajectory = from_prm800k(record, 0)[0]
        prefixes = {
            (tuple(trajectory.steps[:k]), tuple(trajectory.labels[:k]))
            for k in range(1, len(trajectory.steps))
        }
        assert from_parquet == from_raw | prefixes


# -- formats ---------------------------------------------------------------------------------------------


def test_soft_labels_stay_float(tmp_path):
    row = {"prompt": "p", "completions": ["a", "b", "c"], "labels": [0.25, 0.875, 1]}
    for source in ([row], write_jsonl(tmp_path / "soft.jsonl", [row])):
        (ex,) = load_step_examples(source).examples
        assert ex.labels == [0.25, 0.875, 1.0]
        assert all(type(x) is float for x in ex.labels)
    assert from_trl(GOOD, 0).labels == [1.0, 0.0]


def test_processbench_labels():
    row = {"problem": "p", "steps": ["a", "b", "c", "d"], "label": 1}
    assert from_processbench(row, 0).labels == [1.0, 0.0, 0.0, 0.0]
    assert from_processbench(row, 0, after_error="truncate").labels == [1.0, 0.0]
    assert from_processbench({**row, "label": -1}, 0).labels == [1.0] * 4
    assert from_processbench({**row, "label": 0}, 0).labels == [0.0] * 4
    for bad in (4, -2, 1.0, True, "1"):
        with pytest.raises(ValueError, match="label"):
            from_processbench({**row, "label": bad}, 0)


def test_math_shepherd_question_mentioning_step_1():
    row = {
        "input": "Why is Step 1: first? Step 1: Because. ки\nStep 2: Yes. ки",
        "label": "Why is Step 1: first? Step 1: Because. +\nStep 2: Yes. -",
    }
    ex = from_math_shepherd(row, 3)
    assert (ex.prompt, ex.steps, ex.labels, ex.source_row) == (
        "Why is Step 1: first?",
        ["Step 1: Because.", "Step 2: Yes."],
        [1.0, 0.0],
        3,
    )


@pytest.mark.parametrize(
    "row, message",
    [
        ({"input": "Q Step 1: a ки", "label": "Q Step 1: a *"}, "marked"),
        ({"input": "Q Step 1: a ки", "label": "Q Step 1: b +"}, "differs"),
        ({"input": "Q Step 1: a ки", "label": "Q Step 1: a + extra"}, "differs"),
        ({"input": "Q Step 1: a", "label": "Q Step 1: a"}, "no step tag"),
        ({"input": "Q Step 1: a ки tail", "label": "Q Step 1: a + tail"}, "after the last step tag"),
        ({"input": "Q a ки", "label": "Q a +"}, "cannot find the question"),
        ({"input": "Q Step 1: a ки ки", "label": "Q Step 1: a + +"}, "step 1 is empty"),
    ],
)
def test_math_shepherd_bad_rows(row, message):
    with pytest.raises(ValueError, match=message):
        from_math_shepherd(row, 0)


def prm800k_record(*steps, finish_reason="solution", generation=None):
    return {
        "generation": generation,
        "is_initial_screening_question": generation == -1,
        "question": {"problem": "p"},
        "label": {"steps": list(steps), "finish_reason": finish_reason},
    }


def step(*ratings, chosen=0, human=None):
    completions = [{"text": f"c{i}", "rating": r, "flagged": None} for i, r in enumerate(ratings)]
    human_completion = None if human is None else {"text": human, "rating": None, "source": "human"}
    return {"completions": completions, "chosen_completion": chosen, "human_completion": human_completion}


def test_prm800k_trajectory():
    record = prm800k_record(
        step(1), step(-1, -1, chosen=None, human="h"), step(0, 1, chosen=1), step(1, -1, 0, chosen=None)
    )
    (ex,) = from_prm800k(record, 0)
    # The terminal step (no chosen, no human) contributes its first -1 completion and ends the trajectory.
    assert (ex.steps, ex.labels) == (["c0", "h", "c1", "c1"], [1.0, 1.0, 1.0, 0.0])
    ended = prm800k_record(step(1), step(1, 0, chosen=None), step(1))
    assert [e.steps for e in from_prm800k(ended, 0)] == [["c0"]]
    with pytest.raises(RecordDropped, match="no labelled step"):
        from_prm800k(prm800k_record(step(0)), 0, neutral="skip")
    with pytest.raises(RecordDropped, match="bad_problem"):
        from_prm800k(prm800k_record(step(1), finish_reason="bad_problem"), 0)
    (flagged,) = from_prm800k(prm800k_record(step(1), finish_reason="bad_problem"), 0, skip_flagged=False)
    assert flagged.labels == [1.0]
    with pytest.raises(RecordDropped, match="screening"):
        from_prm800k(prm800k_record(step(1), generation=-1), 0)


def test_prm800k_alternatives():
    record = prm800k_record(step(1), step(-1, 0, chosen=None, human="h"), step(0, 1, None, chosen=1))
    got = [(e.steps, e.labels) for e in from_prm800k(record, 0, alternatives=True)]
    assert got == [
        (["c0", "h", "c1"], [1.0, 1.0, 1.0]),  # the trajectory first
        (["c0", "c0"], [1.0, 0.0]),  # then each rated completion not followed; the unrated one is left out
        (["c0", "c1"], [1.0, 1.0]),
        (["c0", "h", "c0"], [1.0, 1.0, 1.0]),
    ]
    skipped = [(e.steps, e.labels) for e in from_prm800k(record, 0, neutral="skip", alternatives=True)]
    assert skipped == [(["c0", "h", "c1"], [1.0, 1.0, 1.0]), (["c0", "c0"], [1.0, 0.0])]
    # A trajectory that ends without an error still gives the rated completions of its last step.
    gave_up = prm800k_record(step(1, 0, chosen=None), finish_reason="give_up")
    got = from_prm800k(gave_up, 0, neutral="negative", skip_flagged=False, alternatives=True)
    assert [(e.steps, e.labels) for e in got] == [(["c0"], [1.0]), (["c1"], [0.0])]


def critic_row(rating=-1, **extra):
    row = {
        "instruction": "p",
        "responses": ["a", "b"],
        "next_response": "c",
        "answer": None,
        "is_human_response": False,
        "is_solution": False,
        "is_preferred_response": False,
        "rating": rating,
    }
    return {**row, **extra}


def test_prm800k_critic_rows():
    ex = from_prm800k_critic(critic_row(), 7)
    assert (ex.prompt, ex.steps, ex.labels, ex.source_row) == ("p", ["a", "b", "c"], [1.0, 1.0, 0.0], 7)
    # The answer section goes back into the step text, as raw PRM800K has it.
    assert from_prm800k_critic(critic_row(1, answer="29"), 0).steps[-1] == "c\n\n# Answer\n\n29"
    assert from_prm800k_critic(critic_row(None, is_human_response=True), 0).labels[-1] == 1.0
    assert from_prm800k_critic(critic_row(0), 0, neutral="negative").labels[-1] == 0.0
    with pytest.raises(RecordDropped, match="unrated"):
        from_prm800k_critic(critic_row(None), 0)
    with pytest.raises(RecordDropped, match="neutral"):
        from_prm800k_critic(critic_row(0), 0, neutral="skip")
    with pytest.raises(ValueError, match="rated 5"):
        from_prm800k_critic(critic_row(5), 0)
    assert detect_format(critic_row()) == "prm800k_critic"


@pytest.mark.parametrize(
    "bad_step, message",
    [
        (step(1, chosen=1), "not a completion index"),
        (step(None), "rated None"),
        (step(2), "rated 2"),
        ({"completions": [{"rating": 1}], "chosen_completion": 0}, "no text"),
        ("text", "not an object"),
    ],
)
def test_prm800k_bad_records(bad_step, message):
    with pytest.raises(ValueError, match=message):
        from_prm800k(prm800k_record(step(1), bad_step), 0)


def test_detect_format():
    assert detect_format(GOOD) == "trl"
    assert detect_format({"problem": "", "steps": [], "label": -1, "id": 1}) == "processbench"
    assert detect_format({"input": "", "label": "", "task": "GSM8K"}) == "math_shepherd"
    with pytest.raises(ValueError, match="no known format"):
        detect_format({"text": "x"})
    with pytest.raises(ValueError, match="several formats"):
        detect_format({"input": "", "question": {}, "label": ""})


# -- validation ------------------------------------------------------------------------------------------

BAD_ROWS = [
    ({**GOOD, "completions": [], "labels": []}, "step list is empty"),
    ({**GOOD, "labels": [1.0]}, "1 labels for 2 steps"),
    ({**GOOD, "labels": [1.0, 1.5]}, "label 1 is 1.5, outside"),
    ({**GOOD, "labels": [-0.5, 1.0]}, "label 0 is -0.5, outside"),
    ({**GOOD, "labels": [math.nan, 1.0]}, "label 0 is nan"),
    ({**GOOD, "labels": ["1", 1.0]}, "label 0 must be a number"),
    ({**GOOD, "completions": ["a", 7]}, "step 1 must be a string"),
    ({**GOOD, "completions": ["a", "  "]}, "step 1 is empty"),
    ({**GOOD, "completions": ["a", "b \ud800"]}, "step 1 is not valid Unicode text"),
    ({**GOOD, "prompt": "\udfff"}, "the prompt is not valid Unicode text"),
    ({**GOOD, "prompt": None}, "field 'prompt' has type NoneType"),
    ({"prompt": "p", "completions": ["a"]}, "missing field 'labels'"),
    ([1, 2], "expected an object"),
]


@pytest.mark.parametrize("row, message", BAD_ROWS)
def test_bad_row_raises_naming_its_line(tmp_path, row, message):
    path = write_jsonl(tmp_path / "rows.jsonl", [GOOD, "", row])
    with pytest.raises(ValueError, match=f"rows.jsonl:3: .*{message}"):
        load_step_examples(path, format="trl")
    with pytest.raises(ValueError, match=f"row 1: .*{message}"):
        load_step_examples([GOOD, row], format="trl")


def test_bad_rows_skipped_and_reported(tmp_path):
    rows = [GOOD] + [row for row, _ in BAD_ROWS] + [b'{"prompt": "\xff"}', "{not json", GOOD]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    result = load_step_examples(path, format="trl", on_bad_row="skip")
    assert [e.source_row for e in result.examples] == [0, len(rows) - 1]
    assert [where for where, _ in result.skipped] == [f"{path}:{line}" for line in range(2, len(rows))]
    for (_, reason), (_, message) in zip(result.skipped, BAD_ROWS):
        assert message in reason
    assert result.skipped[-2][1].startswith("not UTF-8: ")
    assert result.skipped[-1][1].startswith("not valid JSON: ")


def test_non_utf8_line_is_named(tmp_path):
    path = write_jsonl(
        tmp_path / "rows.jsonl", [GOOD, b'{"prompt": "caf\xe9", "completions": ["a"], "labels": [1]}']
    )
    with pytest.raises(ValueError, match=r"rows.jsonl:2: not UTF-8: 'utf-8' codec can't decode"):
        load_step_examples(path)


def test_whole_source_errors(tmp_path):
    with pytest.raises(ValueError, match="neutral must be one of"):
        load_step_examples([GOOD], neutral="maybe")
    with pytest.raises(ValueError, match="format must be one of"):
        load_step_examples([GOOD], format="csv")
    with pytest.raises(ValueError, match=r"unknown file type '\.csv'"):
        load_step_examples(tmp_path / "rows.csv")
    (tmp_path / "obj.json").write_text('{"prompt": "p"}')
    with pytest.raises(ValueError, match="expected a JSON array"):
        load_step_examples(tmp_path / "obj.json")
    (tmp_path / "bad.json").write_bytes(b'[{"prompt": "\xff"}]')
    with pytest.raises(ValueError, match=r"bad\.json: not a UTF-8 JSON file"):
        load_step_examples(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="no usable example"):
        load_step_examples([{**GOOD, "labels": [1.0]}], on_bad_row="skip")
    # A format that cannot be detected is never skipped: the whole source is the wrong kind.
    with pytest.raises(ValueError, match="no known format"):
        load_step_examples([{"text": "x"}], on_bad_row="skip")
    with pytest.raises(TypeError, match="source is a mapping"):
        load_step_examples(GOOD)


def test_step_example_validates_on_construction():
    with pytest.raises(ValueError, match="outside"):
        StepExample("p", ["a"], [2.0], 0)
    assert StepExample("p", ["a"], [True], 0).labels == [1.0]


# -- containers ------------------------------------------------------------------------------------------


# Labels of one type: Parquet needs one column type.
ROWS = [{**GOOD, "labels": [1.0, 0.0]}, {"prompt": "2+2?", "completions": ["4."], "labels": [0.5]}]


def test_every_container_gives_the_same_examples(tmp_path):
    expected = load_step_examples(ROWS).examples
    write_jsonl(tmp_path / "rows.jsonl", ROWS)
    (tmp_path / "rows.json").write_text(json.dumps(ROWS))
    sources = [tmp_path / "rows.jsonl", str(tmp_path / "rows.json"), iter(ROWS)]
    for source in sources:
        assert load_step_examples(source).examples == expected


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "rows.parquet", row_group_size=1)
    assert load_step_examples(tmp_path / "rows.parquet").examples == load_step_examples(ROWS).examples
    bad = [ROWS[0], {**ROWS[1], "labels": [2.0]}]
    pq.write_table(pa.Table.from_pylist(bad), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"bad.parquet\[1\]: label 0 is 2.0"):
        load_step_examples(tmp_path / "bad.parquet")


def test_datasets_dataset():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(ROWS)
    assert load_step_examples(ds).examples == load_step_examples(ROWS).examples

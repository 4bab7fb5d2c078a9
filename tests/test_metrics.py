"""Metrics: answer matching, AUROC / calibration, ProcessBench F1 and sweep, best-of-N; then the same code
on real published data (PRM step scores, ProcessBench labels, GSM8K and MATH solutions)."""

from __future__ import annotations

import json
import math
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastprm.metrics import (
    Problem,
    Sample,
    answer_key,
    answers_equal,
    auroc,
    best_of_n,
    evaluate_processbench,
    expected_calibration_error,
    extract_answer,
    normalize_answer,
    predicted_first_error,
    reliability_table,
    threshold_sweep,
)
from fastprm.metrics.answers import answer_value
from fastprm.metrics.bon import balanced_orders, problem_accuracy
from fastprm.metrics.processbench import step_outcomes, subset_scores
from step_aggregates import step_aggregates

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def data(*parts: str) -> Path:
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not found: {path}")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------- answers


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        (r"so $x = \boxed{\frac{1}{\sqrt{2}}}$.", r"\frac{1}{\sqrt{2}}"),
        (r"first \boxed{1}, finally \boxed{ {2} }", " {2} "),
        (r"unclosed \boxed{\frac{1}{2}", None),
        ("She pays 3 * 5 = 15\n#### 1,000", "1,000"),
        ("So 2 + 1.5 = 3.5. The answer is 3.5.", "3.5"),
        ("The answer is: $18$.\nDone", "$18$"),
        ("She has 13 eggs left\nA: 26", "26"),
        ("No conclusion here.", None),
    ],
)
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("$1,000$", "1000"),
        ("5", "5.0"),
        ("5.00", "+5"),
        (r"\dfrac{1}{2}", "0.5"),
        ("1/2", ".5"),
        (r"-\frac{40}{153}", "-40/153"),
        (r"\left( 1, 2 \right)", "(1,2)"),
        (r"\text{(A)}", "(A)"),
        ("18.", "18"),
        (r"90^\circ", "90"),
        (r"25\%", "25"),
        (r"900,\!000", "900000"),
        ("10{,}000", "10000"),
        (r"\$6", "6"),
        (r"\tfrac{3}{4}", r"\frac{3}{4}"),
    ],
)
def test_equal_answers(a, b):
    assert answers_equal(a, b) and answers_equal(b, a)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("5", "6"),
        ("1,2", "12"),
        ("0.33", "1/3"),
        (r"\frac{1}{2}", r"\frac{1}{3}"),
        ("x", "y"),
        (None, None),
        ("", ""),
    ],
)
def test_different_answers(a, b):
    assert not answers_equal(a, b)


@settings(max_examples=60, deadline=None)
@given(st.integers(-(10**9), 10**9))
def test_spellings_of_one_number_are_equal(n):
    assert answers_equal(f"{n:,}", str(n))
    assert answers_equal(f"${n}.00$", str(n))
    assert answers_equal(extract_answer(f"So it is \\boxed{{{n:,}}}."), f"{n}.0")
    assert answers_equal(f"\\dfrac{{{n}}}{{4}}", str(n / 4))  # quarters are exact in binary floats
    assert not answers_equal(str(n), str(n + 1))


def test_answer_key_is_exact_for_numbers():
    assert answer_value(normalize_answer("0.1")) == Fraction(1, 10)  # not the float 0.1000000000000000055...
    assert answer_key("1/0") == "1/0"  # no division by zero: kept as text
    assert answer_key(r"\sqrt{2}") == r"\sqrt{2}"


# ---------------------------------------------------------------- AUROC and calibration


def pairwise_auroc(scores, outcomes) -> float:
    """The definition: P(score of a good step > score of a bad one), ties counting 1/2."""
    pos = [s for s, y in zip(scores, outcomes) if y]
    neg = [s for s, y in zip(scores, outcomes) if not y]
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.booleans()), min_size=2, max_size=30))
def test_auroc_is_the_pairwise_probability_with_ties(pairs):
    scores = [s / 4 for s, _ in pairs]  # few distinct values: many ties
    outcomes = [y for _, y in pairs]
    if len(set(outcomes)) < 2:
        assert math.isnan(auroc(scores, outcomes))
    else:
        assert auroc(scores, outcomes) == pytest.approx(pairwise_auroc(scores, outcomes), abs=1e-12)


def test_auroc_known_values():
    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 0.0
    assert auroc([0.5, 0.5, 0.5], [1, 0, 1]) == 0.5


def test_nan_scores_rank_lowest_and_count_as_confidence_zero():
    # As the lowest score: a NaN good step ranks below the bad step, and ties with the other NaN.
    assert auroc([math.nan, 0.2, 0.8], [1, 0, 1]) == auroc([-1.0, 0.2, 0.8], [1, 0, 1]) == 0.5
    assert auroc([math.nan, None, 0.3], [1, 0, 1]) == auroc([0.0, 0.0, 0.3], [1, 0, 1])
    table = reliability_table([math.nan, None, 0.95], [1, 0, 1], n_bins=10)
    assert table[0]["count"] == 2 and table[0]["confidence"] == 0.0 and table[0]["accuracy"] == 0.5
    assert sum(b["count"] for b in table) == 3  # nothing silently dropped
    assert expected_calibration_error(table) == pytest.approx((2 * 0.5 + 1 * 0.05) / 3)


def test_reliability_table_and_ece():
    conf = [0.05, 0.15, 0.12, 0.95, 1.0]
    good = [0, 1, 0, 1, 1]
    table = reliability_table(conf, good, n_bins=10)
    assert [b["count"] for b in table] == [1, 2, 0, 0, 0, 0, 0, 0, 0, 2]  # 1.0 falls in the last bin
    assert table[1]["confidence"] == pytest.approx(0.135) and table[1]["accuracy"] == 0.5
    assert table[2]["confidence"] is None and table[9]["accuracy"] == 1.0
    expected = (1 * 0.05 + 2 * abs(0.5 - 0.135) + 2 * abs(1 - 0.975)) / 5
    assert expected_calibration_error(table) == pytest.approx(expected)
    assert math.isnan(expected_calibration_error(reliability_table([], [])))


# ---------------------------------------------------------------- ProcessBench


def test_predicted_first_error():
    assert predicted_first_error([0.9, 0.4, 0.2], 0.5) == 1
    assert predicted_first_error([0.9, 0.5], 0.5) == -1  # at the threshold is not below it
    assert predicted_first_error([], 0.5) is None  # no step scored: no prediction


def test_subset_scores_is_the_harmonic_mean_of_both_accuracies():
    s = subset_scores(labels=[2, 0, 1, -1, -1], predictions=[2, -1, 1, -1, 0])
    assert (s["n_error"], s["n_correct"]) == (3, 2)
    assert s["error_accuracy"] == pytest.approx(2 / 3) and s["correct_accuracy"] == 0.5
    assert s["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert math.isnan(subset_scores([1], [0])["f1"])  # no all-correct sample
    assert subset_scores([1, -1], [0, 0])["f1"] == 0.0


GRID = [0.0, 0.25, 0.5, 0.75, 1.0]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b"]),
            st.lists(st.sampled_from([*GRID, math.nan, None]), max_size=5),
            st.integers(-1, 5),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_sweep_equals_thresholding_each_sample(rows):
    """Scores on the threshold grid make every tie between a score and a threshold happen; NaN and None
    steps (no score) are errors at every threshold; samples with no scored step are left out of both."""
    samples = [Sample(subset, min(label, len(scores)), scores) for subset, scores, label in rows]
    sweep = threshold_sweep(samples, GRID)
    scored = [s for s in samples if s.step_scores]
    assert sorted(sweep["f1"]) == sorted({s.subset for s in scored} | {"average"})
    for i, t in enumerate(GRID):
        direct = {}
        for subset in sorted({s.subset for s in scored}):
            members = [s for s in scored if s.subset == subset]
            preds = [predicted_first_error(s.step_scores, t) for s in members]
            direct[subset] = subset_scores([s.label for s in members], preds)["f1"]
            np.testing.assert_equal(sweep["f1"][subset][i], direct[subset])
        defined = [v for v in direct.values() if not math.isnan(v)]
        np.testing.assert_allclose(sweep["f1"]["average"][i], np.mean(defined) if defined else np.nan)


def test_a_nan_step_is_an_error_at_every_threshold():
    assert predicted_first_error([0.9, math.nan, 0.1], 0.5) == 1
    assert predicted_first_error([0.9, None], 0.0) == 1  # even where no real score can be below
    assert predicted_first_error([math.nan], 1.0) == 0


def test_nan_scores_f1_and_sweep_agree():
    """Issue 10 defect 7: one all-correct solution whose steps have no score used to be F1 100 at 0.5
    (NaN < 0.5 is False: "no error") while the sweep said 0."""
    samples = [Sample("s", -1, [math.nan, math.nan]), Sample("s", 1, [0.9, 0.2])]
    m = evaluate_processbench(samples, threshold=0.5)
    assert m["predictions"] == [0, 1]
    assert m["subsets"]["s"]["correct_accuracy"] == 0.0 and m["subsets"]["s"]["f1"] == 0.0
    at_half = m["sweep"]["thresholds"].index(0.5)
    assert m["sweep"]["f1"]["s"][at_half] == m["subsets"]["s"]["f1"]
    assert m["best"]["f1"] == 0.0
    assert m["steps"]["n"] == 4 and m["steps"]["n_nan"] == 2


def test_rows_with_no_scored_step_are_left_out_and_counted():
    """Issue 10 defect 8: a row whose steps were all dropped by truncation is no prediction (it was
    counted as a correct "-1")."""
    right = [Sample("s", -1, [0.9]), Sample("s", 0, [0.1])]
    m = evaluate_processbench([*right, Sample("s", -1, []), Sample("s", 0, [])], threshold=0.5)
    alone = evaluate_processbench(right, threshold=0.5)
    assert m["unscored_rows"] == 2 and alone["unscored_rows"] == 0
    assert m["predictions"] == [-1, 0, None, None]
    assert m["subsets"] == alone["subsets"] and m["sweep"] == alone["sweep"] and m["steps"] == alone["steps"]
    assert (m["subsets"]["s"]["n_error"], m["subsets"]["s"]["n_correct"]) == (1, 1)
    nothing = evaluate_processbench([Sample("s", -1, [])])
    assert nothing["subsets"] == {} and nothing["unscored_rows"] == 1
    assert len(nothing["sweep"]["f1"]["average"]) == len(nothing["sweep"]["thresholds"])
    assert nothing["best"]["threshold"] is None and math.isnan(nothing["average"]["f1"])


def test_step_outcomes():
    assert step_outcomes(-1, 3) == [1, 1, 1]
    assert step_outcomes(2, 5) == [1, 1, 0]  # steps after the first error are unlabelled
    assert step_outcomes(0, 2) == [0]
    assert step_outcomes(4, 2) == [1, 1]  # the wrong step was truncated away


def test_evaluate_processbench():
    samples = [
        Sample("gsm8k", 1, [0.9, 0.3, 0.8]),
        Sample("gsm8k", -1, [0.9, 0.6]),
        Sample("math", 0, [0.45, 0.9]),
        Sample("math", -1, [0.7, 0.4]),
        Sample("math", 1, [0.8, 0.35]),
    ]
    m = evaluate_processbench(samples, threshold=0.5)
    assert m["predictions"] == [1, -1, 0, 1, 1]
    assert m["subsets"]["gsm8k"]["f1"] == 1.0
    assert m["subsets"]["math"]["error_accuracy"] == 1.0 and m["subsets"]["math"]["correct_accuracy"] == 0.0
    assert m["average"]["f1"] == 0.5
    # gsm8k is all right for t in (0.3, 0.6]; math at best finds one of its two errors and keeps its
    # all-correct sample (t in (0.35, 0.4]): F1 2/3. The lowest grid threshold of the best average is 0.36.
    assert m["best"]["threshold"] == 0.36 and m["best"]["f1"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["steps"]["n"] == 2 + 2 + 1 + 2 + 2
    labelled = ([0.9, 0.3, 0.9, 0.6, 0.45, 0.7, 0.4, 0.8, 0.35], [1, 0, 1, 1, 0, 1, 1, 1, 0])
    assert m["steps"]["auroc"] == pytest.approx(auroc(*labelled))
    assert m["steps"]["ece"] == pytest.approx(expected_calibration_error(reliability_table(*labelled)))


# ---------------------------------------------------------------- best-of-N


def test_selection_rules_on_a_hand_made_problem():
    # Candidates: a (right, one weak step), b, b (wrong, confident), c (wrong).
    p = Problem(
        correct=[True, False, False, False],
        scores={"min": [0.9, 0.6, 0.5, 0.95], "last": [0.9, 0.3, 0.3, 0.1]},
        answers=["a", "b", "b", "c"],
    )
    acc = best_of_n([p], aggregates=("min", "last"))["accuracy"]
    assert acc["prm-min"] == 0.0  # c has the highest min
    assert acc["prm-last"] == 1.0
    assert acc["weighted-min"] == 0.0  # b: 0.6 + 0.5 = 1.1 > c: 0.95 > a: 0.9
    assert acc["weighted-last"] == 1.0  # a: 0.9 > b: 0.6
    assert acc["majority"] == 0.0
    assert acc["random"] == 0.25 and acc["oracle"] == 1.0


def test_ties_share_the_credit_and_missing_answers_do_not_vote():
    p = Problem(correct=[True, False, False], scores={"min": [0.7, 0.7, math.nan]}, answers=["1", None, "2"])
    acc = problem_accuracy(p, ["prm-min", "weighted-min", "majority"], n=3)
    assert acc["prm-min"] == 0.5  # two candidates tie at 0.7; the NaN one is never picked
    assert acc["weighted-min"] == 1.0  # "1": 0.7 vs "2": NaN counted 0
    assert acc["majority"] == 0.5  # "1" and "2" one vote each
    with pytest.raises(ValueError, match="answers"):
        problem_accuracy(Problem([True], {"min": [0.5]}), ["majority"], n=1)


def test_candidates_without_a_score_are_never_picked_and_weigh_nothing():
    p = Problem(correct=[False, True, False], scores={"min": [None, 0.2, math.nan]}, answers=["x", "y", "x"])
    acc = problem_accuracy(p, ["prm-min", "weighted-min", "majority"], n=3)
    assert acc["prm-min"] == 1.0  # the only scored candidate, however low
    assert acc["weighted-min"] == 1.0  # "y": 0.2 against "x": 0 + 0
    assert acc["majority"] == 0.0  # unscored candidates still vote
    unscored = Problem(correct=[True, False], scores={"min": [None, math.nan]}, answers=["x", "y"])
    assert problem_accuracy(unscored, ["prm-min"], n=2)["prm-min"] == 0.0  # nothing to pick: no credit


def test_balanced_orders_draw_every_candidate_equally_often():
    orders = balanced_orders(5, bases=3, seed=1)
    assert orders.shape == (15, 5)
    for position in range(5):  # so the first N of the orders hold each candidate N/5 of the time
        assert Counter(orders[:, position].tolist()) == dict.fromkeys(range(5), 3)
    assert (balanced_orders(5, 3, seed=1) == orders).all()


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(st.booleans(), st.sampled_from([0.1, 0.5, 0.9]), st.sampled_from("xyz")),
            min_size=1,
            max_size=7,
        ),
        min_size=1,
        max_size=5,
    )
)
def test_curve_starts_at_random_and_ends_at_the_full_pool(problems):
    ps = [
        Problem([c for c, _, _ in p], {"min": [s for _, s, _ in p]}, [a for _, _, a in p]) for p in problems
    ]
    out = best_of_n(ps, aggregates=("min",), ns=[1, 100])
    for rule in out["rules"]:
        assert out["curve"][rule][0] == pytest.approx(out["accuracy"]["random"]), rule
        assert out["curve"][rule][1] == pytest.approx(out["accuracy"][rule]), rule
    assert out["accuracy"]["random"] <= out["accuracy"]["oracle"]


# ---------------------------------------------------------------- real data


@pytest.mark.parametrize("file", ["Math_Shepherd_reward.json", "Easy_to_hard_reward.json"])
def test_rewardmath_prm_scores_beat_random_pick(file):
    """RewardMATH: 10 solutions per problem, the first correct; real per-step scores of two PRMs."""
    items = json.loads(data("rewardmath", file).read_text(encoding="utf-8"))
    problems = []
    for item in items:
        aggs = [step_aggregates(steps) for steps in item["score"]]
        problems.append(
            Problem(
                [i == 0 for i in range(len(aggs))],
                {a: [g[a] for g in aggs] for a in ("min", "prod", "mean", "last")},
            )
        )
    out = best_of_n(problems)
    acc = out["accuracy"]
    print(file, {k: round(v, 4) for k, v in acc.items()})
    assert out["n_problems"] == 483 and "majority" not in acc  # no answers: no votes
    assert acc["random"] == pytest.approx(0.1) and acc["oracle"] == 1.0
    # One right solution against nine wrong ones is hard (the RewardMATH paper reports such PRMs in the
    # teens); with 483 problems a random pick's accuracy has a standard deviation of 1.4 points.
    assert all(acc[f"prm-{a}"] > acc["random"] + 0.03 for a in ("min", "prod", "mean", "last"))
    assert max(acc[f"prm-{a}"] for a in ("min", "prod", "mean", "last")) > 0.17
    assert out["curve"]["prm-min"][0] == pytest.approx(0.1)  # N = 1 is a random pick


def test_qwen25_math_prm_fixture_finds_the_processbench_error():
    """Qwen2.5-Math-PRM-7B's real step probabilities on ProcessBench gsm8k-0 (vLLM's test fixture)."""
    (probs,) = json.loads(data("vllm_fixtures", "qwen2_5_math_prm_reward_step.json").read_text())
    row = json.loads(data("processbench", "gsm8k.json").read_text(encoding="utf-8"))[0]
    assert row["id"] == "gsm8k-0" and len(probs) == len(row["steps"])
    good = [p[1] for p in probs]  # [P(bad), P(good)] per step
    assert predicted_first_error(good, 0.5) == row["label"] == 1
    m = evaluate_processbench([Sample("gsm8k", row["label"], good)])
    print("fixture:", m["subsets"]["gsm8k"], "found for thresholds in", (good[1], good[0]))
    assert m["subsets"]["gsm8k"]["error_accuracy"] == 1.0
    assert all(math.isnan(f) for f in m["sweep"]["f1"]["gsm8k"])  # F1 also needs an all-correct sample


def test_processbench_labels_with_exact_scores_give_f1_one():
    """All four real subsets: scores that put exactly the labelled step below 0.5 are found at 0.5,
    and the all-correct prediction scores F1 0."""
    samples = []
    for subset in ("gsm8k", "math", "olympiadbench", "omnimath"):
        for row in json.loads(data("processbench", f"{subset}.json").read_text(encoding="utf-8")):
            n, label = len(row["steps"]), row["label"]
            scores = [0.9] * n if label == -1 else [0.9] * label + [0.2] + [0.6] * (n - label - 1)
            samples.append(Sample(row["id"].rpartition("-")[0], label, scores))
    assert len(samples) == 3400
    m = evaluate_processbench(samples, threshold=0.5)
    assert all(s["f1"] == 1.0 for s in m["subsets"].values()) and m["average"]["f1"] == 1.0
    assert m["best"]["threshold"] == 0.21  # the lowest threshold above 0.2
    nothing_found = evaluate_processbench(samples, threshold=0.0)
    assert nothing_found["average"]["correct_accuracy"] == 1.0 and nothing_found["average"]["f1"] == 0.0


def test_gsm8k_gold_answers_all_parse_to_numbers():
    for split in ("test", "train"):
        rows = read_jsonl(data("gsm8k", f"{split}.jsonl"))
        values = [answer_value(normalize_answer(extract_answer(r["answer"]) or "")) for r in rows]
        assert len(values) in (1319, 7473) and all(v is not None for v in values), split


def test_gsm8k_model_solutions_match_their_recorded_correctness():
    rows = read_jsonl(data("gsm8k", "example_model_solutions.jsonl"))
    agree = total = 0
    for row in rows:
        gold = extract_answer(row["ground_truth"])
        for model in ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification"):
            sol = row[model]
            agree += answers_equal(extract_answer(sol["solution"]), gold) == sol["is_correct"]
            total += 1
    print(f"gsm8k model solutions: {agree}/{total} agree with is_correct")
    assert total == 4 * 1319 and agree / total > 0.99


def test_qwen25_math_eval_answers_and_votes():
    """Qwen2.5-Math's own evaluation of 8 sampled MATH solutions per problem: its extracted ``pred`` and
    graded ``score`` are reproduced by our extraction and matching, but for two known differences."""
    rows = read_jsonl(data("qwen25_math_eval", "math_cot_100.jsonl"))
    extracted_differently, graded_differently, problems = Counter(), Counter(), []
    for row in rows:
        answers = [extract_answer(r) for r in row["response"]]
        correct = [answers_equal(a, row["gt"]) for a in answers]
        extracted_differently.update(
            a for a, p in zip(answers, row["pred"]) if answer_key(a) != answer_key(p)
        )
        graded_differently.update((a, row["gt"]) for a, c, s in zip(answers, correct, row["score"]) if c != s)
        keys = [answer_key(a) for a in answers]
        problems.append(Problem(correct, {"orm": [s[0] for s in row["pred_score"]]}, keys))
    assert sum(len(r["response"]) for r in rows) == 800
    # Qwen's extraction drops units (we keep "p.m."; both then fail its gold "4:30p..") and its grader
    # misses that 10{,}000 is 10000.
    assert extracted_differently == {r"4:30 \text{ p.m.}": 8}
    assert graded_differently == {("10000", "10{,}000"): 1}
    acc = best_of_n(problems, aggregates=("orm",))["accuracy"]
    print("qwen25 math eval best-of-8:", {k: round(v, 4) for k, v in acc.items()})
    # Qwen2.5-Math-RM-72B (an outcome RM: one score per solution) and the majority vote beat a random pick.
    assert acc["majority"] > acc["random"] and acc["prm-orm"] > acc["random"]

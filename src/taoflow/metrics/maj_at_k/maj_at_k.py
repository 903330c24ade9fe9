"""maj@k (self-consistency): is the most frequent answer among the first k samples correct?

Answers are grouped by taoflow's normalisation (so "7" and "7.0" vote together); samples with no
answer abstain. Ties are scored by an explicit rule, because with small k they are common and
silently picking one would make the metric depend on sample order:

* ``expected`` (default): 1/t credit when the reference is one of the t tied answers — the
  expected score of a uniformly random tie break, deterministic and order-free;
* ``first``: the tied answer that appears first among the samples wins (what a deployment that
  keeps the earliest answer would do);
* ``strict``: a tie scores 0 (only a clear majority counts).

An item where every sample abstains scores 0.
"""

from collections import Counter

import datasets
import evaluate

from taoflow.core.answers import extract_answer, normalize_answer

TIE_RULES = ("expected", "first", "strict")

_DESCRIPTION = __doc__

_KWARGS_DESCRIPTION = """
Args:
    predictions (list[list[str | None]]): the sampled answers (or completions) of each item.
    references (list[str]): reference answer of each item.
    k (int, optional): vote over the first k samples (default: all of them).
    tie_rule (str): "expected" | "first" | "strict" (default "expected").
    extractor (dict, optional): answer extractor config; predictions are then completions.
Returns:
    maj@k (float): mean score over items.
    scores (list[float]): per-item score, for confidence intervals over items.
    majority (list[str | None]): the voted (normalised) answer per item; for a tie under
        "expected", the first tied answer.
    tied (list[int]): number of answers tied for the top vote (1 = clear majority).
Examples:
    >>> metric = evaluate.load("src/taoflow/metrics/maj_at_k")
    >>> metric.compute(predictions=[["3", "5", "5", "3"]], references=["5"])["maj@k"]
    0.5
"""


def majority_vote(answers, reference, tie_rule="expected"):
    """(score, voted answer, number tied) for one item's answers."""
    if tie_rule not in TIE_RULES:
        raise ValueError(f"unknown tie_rule {tie_rule!r}; choose one of {', '.join(TIE_RULES)}")
    votes = [a for a in (normalize_answer(x) for x in answers) if a is not None]
    if not votes:
        return 0.0, None, 0
    counts = Counter(votes)
    top = max(counts.values())
    tied = [a for a in dict.fromkeys(votes) if counts[a] == top]  # in order of first appearance
    target = normalize_answer(reference)
    if len(tied) == 1 or tie_rule == "first":
        return float(tied[0] == target), tied[0], len(tied)
    if tie_rule == "strict":
        return 0.0, tied[0], len(tied)
    return (1.0 / len(tied) if target in tied else 0.0), tied[0], len(tied)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MajAtK(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Wang et al., Self-Consistency Improves Chain of Thought Reasoning, 2023.",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("string")),
                    "references": datasets.Value("string"),
                }
            ),
        )

    def _compute(self, predictions, references, k=None, tie_rule="expected", extractor=None):
        scores, majority, tied = [], [], []
        for samples, reference in zip(predictions, references, strict=True):
            samples = list(samples)
            if k is not None:
                if k > len(samples):
                    raise ValueError(
                        f"maj@{k} needs at least {k} samples per item, got {len(samples)}"
                    )
                samples = samples[:k]
            if extractor is not None:
                samples = [extract_answer(s, extractor) for s in samples]
            score, answer, n_tied = majority_vote(samples, reference, tie_rule)
            scores.append(score)
            majority.append(answer)
            tied.append(n_tied)
        return {
            "maj@k": sum(scores) / len(scores) if scores else float("nan"),
            "scores": scores,
            "majority": majority,
            "tied": tied,
        }

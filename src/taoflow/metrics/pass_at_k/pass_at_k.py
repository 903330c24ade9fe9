"""pass@k with the unbiased estimator of Chen et al. (2021), "Evaluating Large Language Models
Trained on Code".

For an item with ``n`` sampled answers of which ``c`` are correct, the probability that at
least one of ``k`` answers drawn without replacement from the ``n`` is correct is
``1 - C(n - c, k) / C(n, k)``. Averaging this over items has lower variance than scoring only
the first ``k`` samples, and pass@1 is then simply the fraction of correct samples. Needs
``k <= n`` for every item.
"""

from math import comb

import datasets
import evaluate

from taoflow.core.answers import answers_match, extract_answer

_DESCRIPTION = __doc__

_KWARGS_DESCRIPTION = """
Args:
    predictions (list[list[str | None]]): the n sampled answers (or completions) of each item.
    references (list[str]): reference answer of each item.
    k (int | list[int]): the k values to report (default [1]).
    extractor (dict, optional): answer extractor config; predictions are then completions.
Returns:
    pass@<k> (float): mean unbiased pass@k over items, for each k.
    scores@<k> (list[float]): per-item estimate, for confidence intervals over items.
    n_correct (list[int]): correct samples per item.
Examples:
    >>> metric = evaluate.load("src/taoflow/metrics/pass_at_k")
    >>> metric.compute(predictions=[["1", "2", "2", "3"]], references=["2"], k=[1, 2])["pass@2"]
    0.8333333333333334
"""


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one item: ``1 - C(n-c, k) / C(n, k)`` (exact integer arithmetic)."""
    if not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= correct <= samples, got c={c}, n={n}")
    if k < 1 or k > n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n samples per item, got n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PassAtK(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Chen et al., Evaluating Large Language Models Trained on Code, 2021.",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("string")),
                    "references": datasets.Value("string"),
                }
            ),
        )

    def _compute(self, predictions, references, k=(1,), extractor=None):
        ks = [k] if isinstance(k, int) else list(k)
        n_correct, n_samples = [], []
        for samples, reference in zip(predictions, references, strict=True):
            if extractor is not None:
                samples = [extract_answer(s, extractor) for s in samples]
            n_correct.append(sum(answers_match(s, reference) for s in samples))
            n_samples.append(len(samples))
        out = {"n_correct": n_correct}
        for value in ks:
            scores = [pass_at_k(n, c, value) for n, c in zip(n_samples, n_correct, strict=True)]
            out[f"pass@{value}"] = sum(scores) / len(scores) if scores else float("nan")
            out[f"scores@{value}"] = scores
        return out

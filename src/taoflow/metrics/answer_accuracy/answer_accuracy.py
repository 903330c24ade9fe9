"""Answer accuracy: does the final answer of a completion match the reference?

Answers compare after taoflow's normalisation (``taoflow.answers``): numbers compare
numerically ("1,000" == "1000.0" == "1e3"), text by Unicode NFC, case and whitespace. With
``extractor`` set, predictions are raw completions and the final answer is read from each with
the same extractor the scoring stage votes with; without it, predictions are answers already.
A prediction with no answer (None or empty) is wrong.
"""

import datasets
import evaluate

from taoflow.core.answers import answers_match, extract_answer

_DESCRIPTION = __doc__

_KWARGS_DESCRIPTION = """
Args:
    predictions (list[str | None]): answers, or completions when ``extractor`` is given.
    references (list[str]): reference answers.
    extractor (dict, optional): answer extractor config (``{"kind": "last_number"}``, ...).
Returns:
    accuracy (float): fraction of predictions whose answer matches its reference.
    scores (list[int]): 1/0 per prediction, for confidence intervals over items.
Examples:
    >>> metric = evaluate.load("src/taoflow/metrics/answer_accuracy")
    >>> metric.compute(predictions=["1,000", "7.0", None], references=["1000", "7", "3"])
    {'accuracy': 0.6666666666666666, 'scores': [1, 1, 0]}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class AnswerAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, extractor=None):
        if extractor is not None:
            predictions = [extract_answer(p, extractor) for p in predictions]
        scores = [int(answers_match(p, r)) for p, r in zip(predictions, references, strict=True)]
        return {"accuracy": sum(scores) / len(scores) if scores else float("nan"), "scores": scores}

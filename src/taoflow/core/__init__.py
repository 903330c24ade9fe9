"""Pure helpers every stage shares: text and PII, answers, statistics, ids and hashing, files.

Nothing here knows about Kedro, MLflow or a model; stages import from here, never from each
other.
"""

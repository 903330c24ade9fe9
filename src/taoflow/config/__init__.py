"""Typed parameters: one pydantic model per YAML block, each default written once.

``conf/base/parameters_<block>.yml`` holds a block's values; ``taoflow.config.<block>`` holds its
model. Nodes declare the model as the type of their ``params:<block>`` input, so Kedro's
parameter validation hands them a validated object; :func:`validate_parameters` checks the whole
resolved configuration first, so a typo anywhere stops the run before the first node with one
line naming the key and the nearest valid name.
"""

from taoflow.config.base import ParameterError, StrictModel, validate_parameters

__all__ = ["ParameterError", "StrictModel", "validate_parameters"]

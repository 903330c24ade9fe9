"""Kedro datasets taoflow adds where kedro-datasets has none."""

from taoflow.datasets.mlflow_policy import MlflowPolicyDataset
from taoflow.datasets.partitions import ResumablePartitionedDataset
from taoflow.datasets.policy import PolicyDataset

__all__ = ["MlflowPolicyDataset", "PolicyDataset", "ResumablePartitionedDataset"]

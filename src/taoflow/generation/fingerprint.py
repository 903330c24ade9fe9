"""A cheap content hash of a loaded policy, for cache and shard keys."""

from __future__ import annotations

from taoflow.core.ids import stable_hash
from taoflow.core.lazy import lazy_module
from taoflow.models import Policy

torch = lazy_module("torch")  # imported on first use (taoflow.core.lazy)


def policy_fingerprint(policy: Policy) -> str:
    """Cheap content hash of a policy (weight statistics + tokenizer), for cache and shard keys.

    Lineage alone is not enough: two runs can save different weights under the same lineage.
    """
    stats = []
    with torch.no_grad():
        for name, param in policy.model.named_parameters():
            p = param.detach().double()
            stats.append(
                [name, list(p.shape), f"{p.sum().item():.10e}", f"{p.abs().sum().item():.10e}"]
            )
    tok = policy.tokenizer
    return stable_hash(
        {
            "weights": stats,
            "vocab": len(tok),
            "chat_template": tok.chat_template,
            "adapter": policy.adapter is not None,
        }
    )

"""Model cards on saved and registered policies, and ``taoflow push-to-hub`` (offline, mocked)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
from huggingface_hub import HfApi, ModelCard

from taoflow import cards, cli
from taoflow.datasets import PolicyDataset

SECRET = "hf_not_a_real_token_0123456789"


@pytest.fixture(scope="module")
def saved_policy(tiny_policy, tmp_path_factory) -> Path:
    """The tiny policy saved as a round-1 DPO policy with the lineage training records."""
    lineage = {
        **tiny_policy.lineage,
        "name": "tiny-base-r1-dpo",
        "base_model": "tiny-base",
        "parent": "tiny-base",
        "round": 1,
        "algorithm": "dpo",
        "lora": False,
        "config_hash": "cfg0123456789abc",
        "data_hashes": {"train_examples": "d4t4h45h"},
        "seed": 3,
        "global_step": 5,
    }
    folder = tmp_path_factory.mktemp("saved") / "policy"
    PolicyDataset(str(folder)).save(dataclasses.replace(tiny_policy, lineage=lineage))
    return folder


def test_saved_policy_carries_a_card_naming_base_model_algorithm_and_data(saved_policy):
    card = ModelCard.load(saved_policy / "README.md")
    meta = card.data.to_dict()
    assert card.data.base_model == "tiny-base"
    assert meta["taoflow"]["algorithm"] == "dpo" and "dpo" in card.data.tags
    assert meta["taoflow"]["data_hashes"] == {"train_examples": "d4t4h45h"}
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert "d4t4h45h" in card.text and "cfg0123456789abc" in card.text
    assert "Not evaluated" in card.text  # no results known at save time
    # Deterministic: the same policy saved again writes the same card.
    first = (saved_policy / "README.md").read_text()
    assert str(cards.policy_card(cards._plain(meta["taoflow"]))) == first
    # The folder still loads as a policy.
    assert PolicyDataset(str(saved_policy)).load().lineage["algorithm"] == "dpo"


def test_card_with_gate_results_has_a_model_index():
    results = {
        "metric": "arith/maj@4",
        "value": 0.625,
        "diff": 0.125,
        "ci_low": 0.02,
        "ci_high": 0.23,
        "n": 40,
        "compared_with": "base",
        "decision": "champion",
        "reason": "paired CI above 0",
    }
    card = cards.policy_card({"name": "p", "base_model": "b", "algorithm": "rft"}, results)
    result = card.data.eval_results[0]
    assert (result.dataset_name, result.metric_type, result.metric_value) == (
        "arith",
        "maj@4",
        0.625,
    )
    assert "@champion" in card.text and "vs base" in card.text


@pytest.fixture()
def fake_hub(monkeypatch):
    """HfApi's network calls replaced by recorders; the token as HF_TOKEN."""
    calls: dict[str, dict] = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = {"repo_id": repo_id, "token": self.token, **kwargs}
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        card = (folder / "README.md").read_text() if (folder / "README.md").is_file() else None
        calls["upload_folder"] = {"token": self.token, "files": files, "card": card, **kwargs}
        return f"https://huggingface.co/{kwargs['repo_id']}/commit/abc"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    return calls


def test_push_to_hub_uploads_the_folder_with_its_card_and_never_logs_the_token(
    saved_policy, fake_hub, capsys, caplog
):
    caplog.set_level(logging.DEBUG)
    code = cli.main(["push-to-hub", str(saved_policy), "me/tiny-dpo", "--private"])
    assert code == 0
    assert fake_hub["create_repo"]["repo_id"] == "me/tiny-dpo"
    assert fake_hub["create_repo"]["private"] is True
    upload = fake_hub["upload_folder"]
    assert upload["repo_id"] == "me/tiny-dpo" and upload["token"] == SECRET
    assert {"README.md", "config.json", "taoflow.json"} <= set(upload["files"])
    assert "base_model: tiny-base" in upload["card"]
    out = capsys.readouterr()
    assert "me/tiny-dpo/commit/abc" in out.out
    assert SECRET not in out.out + out.err + caplog.text


def test_push_to_hub_writes_a_missing_card_and_refuses_clearly(
    saved_policy, fake_hub, tmp_path, monkeypatch, capsys
):
    import shutil

    old = tmp_path / "old_policy"
    shutil.copytree(saved_policy, old)
    (old / "README.md").unlink()  # a folder saved before cards existed
    assert cli.main(["push-to-hub", str(old), "me/old"]) == 0
    assert "README.md" in fake_hub["upload_folder"]["files"]
    assert fake_hub["create_repo"]["private"] is False
    assert "algorithm: dpo" in fake_hub["upload_folder"]["card"]

    assert cli.main(["push-to-hub", str(tmp_path / "nothing"), "me/x"]) == 2
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(cards, "get_token", lambda: None)
    with pytest.raises(cards.UserError, match="HF_TOKEN"):
        cards.push_to_hub(old, "me/old")


def test_push_to_hub_help_documents_the_token():
    text = cli.build_parser()._subparsers._group_actions[0].choices["push-to-hub"].format_help()
    assert "HF_TOKEN" in text and "--private" in text

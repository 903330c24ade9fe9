"""train.gates and train.dpo_reference: learning only from trusted rewards, a fixed DPO anchor."""

from __future__ import annotations

import pandas as pd
import pytest

from taoflow.config.base import ParameterError, validate_block
from taoflow.config.shared import TaskParams
from taoflow.config.train import TrainParams
from taoflow.core.ids import frame_hash
from taoflow.training import apply_gates, build_examples, build_gated_examples, judge_agrees
from tests.synthetic_scored import CASES, synthetic_prompts, synthetic_scored

TASK = TaskParams(system_prompt="Answer with the final number only.")

# (examples hash, rejects hash, n examples) that the code before train.gates existed produced on
# synthetic_scored() for each case (computed with that code's build_examples).
BEFORE_GATES = {
    0: ("283338839ea927ce", "cd73b327ad107634", 10),
    1: ("2189e3a57f911187", "f858a709f3de57d8", 18),
    2: ("ccf7ab4277d49091", "eff2ce410f36e33a", 13),
    3: ("9fc12a8f9b8ed310", "7f0f252bae00b547", 20),
    4: ("9e93382c474f1fe2", "b464d0bb1245f9a5", 26),
    5: ("9f910178c93ef858", "d219e9f66cc3dcb8", 40),
    6: ("7dc3ea75aba339d9", "7767c36f3ab38f5a", 13),
}


def settings(algorithm: str, block: dict | None = None, **train) -> TrainParams:
    return TrainParams.model_validate({"algorithm": algorithm, algorithm: block or {}, **train})


@pytest.mark.parametrize("case", range(len(CASES)))
def test_gates_off_gives_the_examples_of_before_gates(case):
    algorithm, block = CASES[case]
    scored, prompts = synthetic_scored(), synthetic_prompts()
    explicit_off = {
        "min_judge_confidence": None,
        "min_vote_share": None,
        "min_reward_margin": None,
        "drop_no_contrast": None,
        "chosen_from": None,
    }
    for train in (settings(algorithm, block), settings(algorithm, block, gates=explicit_off)):
        examples, rejects, shares = build_gated_examples(scored, prompts, train, TASK)
        assert (frame_hash(examples), frame_hash(rejects), len(examples)) == BEFORE_GATES[case]
        assert shares == {}


def test_config_hash_of_the_default_block_is_unchanged():
    # Lineage and checkpoint resume keys of existing runs stay valid.
    assert TrainParams().config_hash(42) == "7a8574a8fd71928b"
    gated = TrainParams.model_validate({"gates": {"min_vote_share": 0.5}})
    assert gated.config_hash(42) == "7a8574a8fd71928b"  # gates change data, hashed as data
    initial = TrainParams.model_validate({"dpo_reference": "initial"})
    assert initial.config_hash(42) != "7a8574a8fd71928b"


def _gated(algorithm: str, gates: dict, block: dict | None = None):
    scored, prompts = synthetic_scored(), synthetic_prompts()
    train = settings(algorithm, block, gates=gates)
    return scored, *build_gated_examples(scored, prompts, train, TASK)


def _accounted(scored: pd.DataFrame, examples: pd.DataFrame, rejects: pd.DataFrame) -> None:
    used = set()
    for column in ("candidate_id", "chosen_id", "rejected_id"):
        if column in examples.columns:
            used |= set(examples[column])
    assert used | set(rejects["candidate_id"]) == set(scored["candidate_id"])
    assert not used & set(rejects["candidate_id"])


def test_judge_confidence_gate_drops_unconfident_candidates_with_its_reason():
    scored, examples, rejects, shares = _gated("rft", {"min_judge_confidence": 0.7})
    confident = set(scored.loc[scored["judge_confidence"] >= 0.7, "candidate_id"])
    assert set(examples["candidate_id"]) <= confident
    gated = rejects[rejects["reason"].str.startswith("gate min_judge_confidence")]
    assert len(gated) and not set(gated["candidate_id"]) & confident
    assert 0 < shares["min_judge_confidence"] <= 1
    _accounted(scored, examples, rejects)


def test_vote_share_gate_keeps_clear_majorities_only():
    scored, examples, rejects, shares = _gated("dpo", {"min_vote_share": 0.5}, {"min_margin": 0.1})
    share = scored.groupby("prompt_id")["agreement"].max()
    assert set(examples["prompt_id"]) <= set(share[share >= 0.5].index)
    dropped = rejects[rejects["reason"].str.startswith("gate min_vote_share")]
    assert set(dropped["prompt_id"]) and set(dropped["prompt_id"]) <= set(share[share < 0.5].index)
    usable = scored[scored["prompt_id"].str.startswith("p") & (scored["prompt_id"] != "p13")]
    entering = usable["prompt_id"].nunique()
    kept = entering - dropped["prompt_id"].nunique()
    assert shares["min_vote_share"] == pytest.approx(kept / entering)
    _accounted(scored, examples, rejects)


def test_reward_margin_and_no_contrast_gates():
    gates = {"min_judge_confidence": 0.6, "min_reward_margin": 0.6, "drop_no_contrast": True}
    scored, examples, rejects, shares = _gated("kto", gates)
    assert list(shares) == ["min_judge_confidence", "min_reward_margin", "drop_no_contrast"]
    gate_rejected = rejects[rejects["reason"].str.startswith("gate ")]["candidate_id"]
    usable = scored[scored["reward"].notna() & (scored["completion"].str.strip() != "")]
    kept = usable[~usable["candidate_id"].isin(gate_rejected)]
    kept = kept[kept["prompt_id"].isin(set(synthetic_prompts()["prompt_id"][:-1]))]
    spread = kept.groupby("prompt_id")["reward"].agg(lambda r: r.max() - r.min())
    assert len(spread) and (spread >= 0.6).all()
    assert kept.groupby("prompt_id").size().min() >= 2
    assert set(examples["prompt_id"]) == set(kept["prompt_id"])
    assert rejects["reason"].str.startswith("gate min_reward_margin").any()
    _accounted(scored, examples, rejects)


def test_chosen_from_judge_pairs_agreed_against_rejected():
    scored, examples, rejects, _ = _gated("dpo", {"chosen_from": "judge"})
    by_id = scored.set_index("candidate_id")
    assert len(examples)
    for chosen, rejected in zip(examples["chosen_id"], examples["rejected_id"], strict=True):
        assert by_id.loc[chosen, "answer"] == by_id.loc[chosen, "judge_answer"]
        assert by_id.loc[rejected, "answer"] != by_id.loc[rejected, "judge_answer"]
    # p09 has no judge answer: the judge agrees with nobody, so no pair
    assert "p09" not in set(examples["prompt_id"])
    assert rejects.loc[rejects["prompt_id"] == "p09", "reason"].str.contains("judge").all()
    # the unanimous groups (all rewards equal) still pair when the judge splits them
    assert (examples["chosen_reward"] == examples["rejected_reward"]).any()
    _accounted(scored, examples, rejects)


def test_chosen_from_judge_rft_targets_are_judge_approved():
    scored, examples, rejects, _ = _gated("rft", {"chosen_from": "judge"}, {"min_reward": 0.0})
    chosen = scored.set_index("candidate_id").loc[examples["candidate_id"]]
    assert (chosen["answer"] == chosen["judge_answer"]).all()
    _accounted(scored, examples, rejects)


def test_judge_agreement_falls_back_to_the_judge_score():
    frame = pd.DataFrame({"score_judge": [0.9, 0.2, float("nan")], "answer": ["1", "2", "3"]})
    gates = TrainParams.model_validate({"gates": {"chosen_from": "judge"}}).gates
    assert judge_agrees(frame, gates).tolist() == [True, False, False]
    with_answer = frame.assign(judge_answer=["1.0", None, "4"])
    assert judge_agrees(with_answer, gates).tolist() == [True, False, False]


def test_a_gate_on_a_missing_column_names_it():
    scored = synthetic_scored().drop(columns=["judge_confidence"])
    train = settings("rft", gates={"min_judge_confidence": 0.5})
    with pytest.raises(ValueError, match="judge_confidence"):
        build_examples(scored, synthetic_prompts(), train, TASK)
    renamed = synthetic_scored().rename(columns={"judge_confidence": "judge_conf"})
    train = settings(
        "rft", gates={"min_judge_confidence": 0.5, "judge_confidence_column": "judge_conf"}
    )
    assert len(build_examples(renamed, synthetic_prompts(), train, TASK)[0])


def test_gates_that_keep_nothing_fail_with_the_shares():
    train = settings("rft", gates={"min_vote_share": 1.01})
    with pytest.raises(ValueError, match="min_vote_share"):
        build_examples(synthetic_scored(), synthetic_prompts(), train, TASK)


def test_apply_gates_is_order_independent_of_rows():
    gates = settings("rft", gates={"min_vote_share": 0.4, "drop_no_contrast": True}).gates
    frame = synthetic_scored().dropna(subset=["reward"])
    a = apply_gates(frame, gates).kept.sort_values("candidate_id")["candidate_id"].tolist()
    shuffled = frame.sample(frac=1.0, random_state=1)
    b = apply_gates(shuffled, gates).kept.sort_values("candidate_id")["candidate_id"].tolist()
    assert a == b


def test_gate_config_typos_and_misuse_are_errors():
    with pytest.raises(ParameterError, match="min_vote_share"):
        validate_block("train", {"gates": {"min_vote_shares": 0.5}})
    with pytest.raises(ParameterError, match="chosen_from"):
        validate_block("train", {"algorithm": "kto", "gates": {"chosen_from": "judge"}})
    with pytest.raises(ParameterError):
        validate_block("train", {"dpo_reference": "base"})
    assert not TrainParams().gates.active
    assert not TrainParams.model_validate({"gates": {"chosen_from": "reward"}}).gates.active


def test_train_node_reports_each_gates_kept_share():
    from taoflow.pipelines.train.nodes import build_train_examples

    train = settings("rft", gates={"min_judge_confidence": 0.5, "min_vote_share": 0.3})
    _, _, metrics = build_train_examples(synthetic_scored(), synthetic_prompts(), train, TASK)
    names = {name for name in metrics}
    assert "train.data.gate_kept_share.min_judge_confidence" in names
    assert "train.data.gate_kept_share.min_vote_share" in names
    _, _, plain = build_train_examples(
        synthetic_scored(), synthetic_prompts(), settings("rft"), TASK
    )
    assert not any("gate_kept_share" in name for name in plain)


# ---------------------------------------------------------------- dpo_reference: initial


def _tao_graph(monkeypatch, rounds: int, **train):
    from taoflow.config.tao import TaoParams
    from taoflow.pipelines.tao import pipeline as tao

    params = {"tao": TaoParams(rounds=rounds), "train": TrainParams.model_validate(train)}
    monkeypatch.setattr(tao, "graph_parameters", lambda: params)
    graph = tao.create_pipeline()
    return {n.name: n.inputs for n in graph.nodes if n.name.endswith(".train_policy")}


def test_initial_reference_wires_the_base_model_from_round_two(monkeypatch):
    today = _tao_graph(monkeypatch, 3)
    assert all(
        "base_model" not in inputs
        for name, inputs in today.items()
        if name != "round_1.train_policy"
    )
    initial = _tao_graph(monkeypatch, 3, dpo_reference="initial")
    assert initial["round_1.train_policy"] == today["round_1.train_policy"]
    for k in (2, 3):
        assert initial[f"round_{k}.train_policy"] == [
            *today[f"round_{k}.train_policy"],
            "base_model",
        ]
    # another algorithm has no DPO reference: the graph stays as it is
    assert _tao_graph(monkeypatch, 3, algorithm="rft", dpo_reference="initial") == _tao_graph(
        monkeypatch, 3, algorithm="rft"
    )


def _dpo_run(tiny_model_dir, tmp_path, name, reference=None):
    from taoflow.models import load_policy
    from taoflow.training import train_policy
    from tests.test_train import tiny_params

    params = tiny_params(tmp_path / name, "dpo", dpo_reference="initial")
    params["dpo"]["min_margin"] = 0.1
    settings = TrainParams.model_validate(params)
    scored, prompts = synthetic_scored(), synthetic_prompts()
    examples, _ = build_examples(scored, prompts, settings, TASK)
    return train_policy(
        load_policy(str(tiny_model_dir)),
        examples,
        settings,
        seed=0,
        round_=2,
        data_hashes={"scored": frame_hash(scored)},
        reference=reference,
    )


def test_dpo_trains_against_the_reference_it_is_given(tiny_model_dir, tmp_path):
    import torch

    from taoflow.models import load_policy

    plain, _, plain_curves = _dpo_run(tiny_model_dir, tmp_path, "plain")
    # a reference with the policy's own weights: the same training as TRL's default reference
    same = load_policy(str(tiny_model_dir))
    same_trained, _, _ = _dpo_run(tiny_model_dir, tmp_path, "same", reference=same)
    for key, value in plain.model.state_dict().items():
        assert torch.allclose(value, same_trained.model.state_dict()[key], atol=1e-6)
    assert same_trained.lineage["reference"] == same.name and "reference" not in plain.lineage
    # a different reference (another base) changes the reference log-probs, hence the loss
    other = load_policy(str(tiny_model_dir))
    with torch.no_grad():
        for parameter in other.model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    _, _, other_curves = _dpo_run(tiny_model_dir, tmp_path, "other", reference=other)
    first = plain_curves["train.round_2.loss"][0]["value"]
    assert other_curves["train.round_2.loss"][0]["value"] != pytest.approx(first, rel=1e-4)

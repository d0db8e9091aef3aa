"""Bring your own model: ``teacher.model=<folder>`` for each supported family.

For every family a tiny randomly initialised base model is saved to a folder with
``save_pretrained`` (as a user's checkpoint would be), then loaded the way a study loads its
teacher: the sequence classifier is built, its blocks are found, truncated, scored by an
importance method, distilled for one step, and rebuilt from its config dict and weights as
trials rebuild the teacher.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.compress import STAGES, StageContext
from engine.compress.distill import DistillConfig
from engine.config import ConfigError, load_study
from engine.importance.compute import score_methods
from engine.importance.config import ImportanceConfig
from engine.models import (
    EMBEDDED_TEACHER,
    build_classifier,
    keep_layers,
    layer_list,
    model_source_problem,
    num_layers,
)
from engine.teacher import load_model
from tests.conftest import toy_batches

SMALL = {"vocab_size": 200, "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4,
         "intermediate_size": 64, "max_position_embeddings": 64}  # fmt: skip
DECODER = {**SMALL, "num_key_value_heads": 2, "pad_token_id": 0, "bos_token_id": 1,
           "eos_token_id": 2}  # fmt: skip
FAMILIES = {  # model_type → config (tiny), and the classifier class expected
    "bert": (SMALL, "BertForSequenceClassification"),
    "roberta": (
        {**SMALL, "max_position_embeddings": 80, "pad_token_id": 1},
        "RobertaForSequenceClassification",
    ),
    "deberta-v2": (
        {
            **SMALL,
            "relative_attention": True,
            "pos_att_type": ["p2c", "c2p"],
            "max_relative_positions": 16,
            "position_buckets": 8,
        },
        "DebertaV2ForSequenceClassification",
    ),  # DeBERTa-v2 and v3
    "distilbert": (
        {
            "vocab_size": 200,
            "dim": 32,
            "n_layers": 3,
            "n_heads": 4,
            "hidden_dim": 64,
            "max_position_embeddings": 64,
        },
        "DistilBertForSequenceClassification",
    ),
    "gpt2": (
        {
            "vocab_size": 200,
            "n_embd": 32,
            "n_layer": 3,
            "n_head": 4,
            "n_positions": 64,
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
        "GPT2ForSequenceClassification",
    ),
    "llama": (DECODER, "LlamaForSequenceClassification"),
    "qwen2": (DECODER, "Qwen2ForSequenceClassification"),
    "mistral": ({**DECODER, "sliding_window": 8}, "MistralForSequenceClassification"),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    from transformers import AutoConfig, AutoModel

    root = tmp_path_factory.mktemp("families")
    out = {}
    for family, (kw, _) in FAMILIES.items():
        torch.manual_seed(0)
        AutoModel.from_config(AutoConfig.for_model(family, **kw)).save_pretrained(root / family)
        out[family] = root / family
    return out


def _train(batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_saved_model_of_each_family_runs_the_teacher_path(folders, family: str) -> None:
    folder = str(folders[family])
    study = load_study("smoke", [f"teacher.model={folder}"])  # validates the folder
    model = build_classifier(study.teacher.model, num_labels=5, seed=0)
    assert type(model).__name__ == FAMILIES[family][1]
    assert model.config.num_labels == 5 and model.config.pad_token_id is not None
    assert num_layers(model) == 3

    # truncate: blocks 0 and 2 kept with their weights, the config says 2 layers
    student = keep_layers(model, [2, 0])
    assert num_layers(student) == 2
    for kept, orig in zip(layer_list(student), (layer_list(model)[0], layer_list(model)[2]),
                          strict=True):  # fmt: skip
        for p, q in zip(kept.parameters(), orig.parameters(), strict=True):
            assert torch.equal(p, q) and p.data_ptr() != q.data_ptr()
    n_cfg = getattr(student.config, "num_hidden_layers", getattr(student.config, "n_layer", None))
    assert n_cfg == 2

    # importance: the fisher scores of every block, finite and positive
    batches = toy_batches(2, 4, 10)
    cfg = ImportanceConfig(methods=("fisher",), num_batches=2, batch_size=4)
    scores = score_methods(model, batches, ("fisher",), cfg)["fisher"].scores
    assert len(scores) == 3 and all(torch.isfinite(torch.as_tensor(scores)))
    assert all(s > 0 for s in scores)

    # one distillation step of the student against the teacher's logits
    train = _train(batches)
    with torch.no_grad():
        t_logits = model(
            input_ids=train["input_ids"], attention_mask=train["attention_mask"]
        ).logits
    before = [p.detach().clone() for p in layer_list(student)[0].parameters()]
    ctx = StageContext(teacher=model, train=train, teacher_logits=t_logits, importance={}, seed=0)
    dcfg = DistillConfig(max_steps=1, batch_size=8, lr=1e-2, epochs=1.0)
    student = STAGES.get("distill")(student, dcfg, ctx)
    assert ctx.record["distill"]["steps"] == 1
    after = list(layer_list(student)[0].parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))

    # trials rebuild the teacher from its config dict and weights: same logits
    model.eval()
    rebuilt = load_model(model.config.to_dict(), model.state_dict())
    with torch.no_grad():
        ids, mask = train["input_ids"], train["attention_mask"]
        torch.testing.assert_close(
            rebuilt(input_ids=ids, attention_mask=mask).logits,
            model(input_ids=ids, attention_mask=mask).logits,
        )


def test_model_source_problems_are_reported_before_any_work(tmp_path: Path, monkeypatch) -> None:
    assert model_source_problem(EMBEDDED_TEACHER) is None
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "without config.json" in model_source_problem(str(empty))
    assert "no such folder" in model_source_problem(str(tmp_path / "missing"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    msg = model_source_problem("no-such-org/no-such-model-xyz")
    assert "HF_HUB_OFFLINE=0" in msg
    with pytest.raises(ConfigError) as err:
        load_study("smoke", ["teacher.model=no-such-org/no-such-model-xyz"])
    assert any("teacher.model: 'no-such-org" in p for p in err.value.problems)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # downloads allowed: a hub id is accepted
    assert model_source_problem("no-such-org/no-such-model-xyz") is None


def test_a_decoder_tokenizer_without_pad_token_pads_with_end_of_text(tmp_path: Path) -> None:
    """GPT-2 / Llama tokenizers have no pad token: tokenising pads with end-of-text, on the
    right, as the classifier head built for them expects."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from engine.data.pipeline import Tokenise

    vocab = {"<unk>": 0, "<|endoftext|>": 1, "good": 2, "bad": 3, "very": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="<unk>"
    )
    assert fast.pad_token is None
    fast.save_pretrained(tmp_path / "tok")
    batch = {
        "title": np.array(["", "very"], dtype=object),
        "text": np.array(["good", "bad"], dtype=object),
        "label": np.array([1, 0]),
        "row_key": np.array(["a", "b"], dtype=object),
        "hash": np.array([1, 2]),
        "split": np.array(["train", "train"], dtype=object),
    }
    out = Tokenise(str(tmp_path / "tok"), 6)(batch)
    assert out["input_ids"].tolist() == [[2, 1, 1, 1, 1, 1], [4, 0, 3, 1, 1, 1]]  # "very. bad"
    assert out["attention_mask"].tolist() == [[1, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]]

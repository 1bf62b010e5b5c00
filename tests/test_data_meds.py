"""MEDS sites (issue 26): schema round trip, the prediction-time leakage guard, vocabulary suppression, encoders."""
from __future__ import annotations

import json
import math
import shutil
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from omnifuse_core.batch import KIND_EVENTS, ModalitySpec
from omnifuse_core.config import Config
from omnifuse_core.data.events import FIRST_CODE, UNKNOWN, combine_vocab
from omnifuse_core.data.site import load_site
from omnifuse_core.data.stats import combine_stats, site_stats
from omnifuse_core.data.validate import validate_site
from omnifuse_core.encoders import build_encoder
from sim.generator import generate_federation


@pytest.fixture(scope="module")
def meds_fed(tmp_path_factory) -> Path:
    return generate_federation("smoke", 2, tmp_path_factory.mktemp("meds") / "fed", seed=0, ehr_format="meds")


@pytest.fixture
def site(meds_fed, tmp_path) -> Path:
    dst = tmp_path / "hospital_a"
    shutil.copytree(meds_fed / "hospital_a", dst)
    return dst


def _cfg(**kw) -> Config:
    return Config().replace(modalities="ehr", **kw)


def _vocab_codes(stats: dict) -> list[str]:
    return stats["vocab"]["ehr"]["codes"]


def _loaded_codes(loaded, stats: dict) -> set[str]:
    """Every code that reaches the encoder, by name."""
    codes = _vocab_codes(stats)
    out = set()
    for split in loaded.splits.values():
        idx = split.inputs["ehr"][..., 0].long().unique().tolist()
        out.update(codes[i - FIRST_CODE] if i >= FIRST_CODE else ("<pad>", "<unk>")[i] for i in idx)
    return out


def _add_events(site: Path, rows: list[tuple[int, object, str, float | None]]) -> None:
    shard = site / "meds" / "data" / "0.parquet"
    old = pq.read_table(shard)
    new = pa.table({"subject_id": pa.array([r[0] for r in rows], pa.int64()),
                    "time": pa.array([r[1] for r in rows], pa.timestamp("us")),
                    "code": pa.array([r[2] for r in rows], pa.string()),
                    "numeric_value": pa.array([r[3] for r in rows], pa.float32())})
    table = pa.concat_tables([old, new]).sort_by([("subject_id", "ascending"), ("time", "ascending")])
    pq.write_table(table, shard)


def _labels(site: Path) -> dict[int, object]:
    t = pq.read_table(site / "meds" / "labels" / "mortality.parquet").to_pylist()
    return {r["subject_id"]: r for r in t}


def test_synthetic_meds_round_trips_through_the_meds_schemas(site):
    from meds import CodeMetadataSchema, DataSchema, DatasetMetadataSchema, LabelSchema, SubjectSplitSchema

    root = site / "meds"
    data = pq.read_table(root / "data" / "0.parquet")
    DataSchema.validate(data.schema)
    DataSchema.validate(data)
    LabelSchema.validate(pq.read_table(root / "labels" / "mortality.parquet"))
    SubjectSplitSchema.validate(pq.read_table(root / "metadata" / "subject_splits.parquet"))
    CodeMetadataSchema.validate(pq.read_table(root / "metadata" / "codes.parquet"))
    DatasetMetadataSchema.validate(json.loads((root / "metadata" / "dataset.json").read_text()))
    report = validate_site(site)
    assert report.ok, report.format()
    assert report.summary["availability"]["ehr"] > 0


def test_leakage_guard_never_shows_a_post_prediction_event(site):
    """A code planted for every positive patient at and after its prediction time would give the label away; it
    never reaches the vocabulary or the model input. One microsecond before the prediction time is used."""
    labels = _labels(site)
    pos = [s for s, r in labels.items() if r["boolean_value"]]
    assert len(pos) >= 5
    planted = []
    for s in labels:
        pt = labels[s]["prediction_time"]
        planted.append((s, pt - timedelta(microseconds=1), "JUST_BEFORE", 1.0))
        if s in pos:
            planted += [(s, pt, "LEAK//AT_PREDICTION", 1.0), (s, pt + timedelta(hours=1), "LEAK//AFTER", 1.0)]
    _add_events(site, planted)
    cfg = _cfg(ehr_vocab_min_patients=1)
    stats = site_stats(site, cfg)
    assert not [c for c in _vocab_codes(stats) if c.startswith("LEAK")]
    assert "JUST_BEFORE" in _vocab_codes(stats) and "MEDS_DEATH" not in _vocab_codes(stats)
    loaded = load_site(site, cfg, stats=stats)
    seen = _loaded_codes(loaded, stats)
    assert "JUST_BEFORE" in seen and not [c for c in seen if c.startswith("LEAK") or c == "MEDS_DEATH"]
    note = next(n for n in loaded.report.summary["notes"] if "leakage guard" in n)
    deaths = int(pq.read_table(site / "meds" / "data" / "0.parquet").column("code").to_pylist().count("MEDS_DEATH"))
    assert f"{2 * len(pos) + deaths} at or after a prediction time left out" in note


def test_look_back_window_and_last_events(site):
    cfg = _cfg(ehr_look_back_hours=6.0, ehr_max_events=8, ehr_vocab_min_patients=1)
    loaded = load_site(site, cfg)
    x = loaded.train.inputs["ehr"]
    assert x.shape[1:] == (8, 4)
    real = x[..., 0] > 0
    buckets = x[..., 3][real]  # 6 h before prediction: log2(1 + 6) < 3 -> buckets 2..4
    assert buckets.min() >= 2 and buckets.max() <= 4
    note = next(n for n in loaded.report.summary["notes"] if "leakage guard" in n)
    assert " 0 before the look-back window" not in note


def test_small_cell_suppression_keeps_rare_codes_at_the_site(site):
    labels = _labels(site)
    splits = dict(zip(*pq.read_table(site / "meds" / "metadata" / "subject_splits.parquet").to_pydict().values()))
    train = [s for s in labels if splits[s] == "train"]
    k = 10
    assert len(train) > k
    rows = []
    for j, s in enumerate(train):
        t = labels[s]["prediction_time"] - timedelta(hours=2)
        if j < k - 1:
            rows.append((s, t, "RARE//HELD_BY_K_MINUS_1", 3.0))
        if j < k:
            rows.append((s, t, "COMMON//HELD_BY_K", 3.0))
    _add_events(site, rows)
    stats = site_stats(site, _cfg(ehr_vocab_min_patients=k))
    assert "RARE//HELD_BY_K_MINUS_1" not in json.dumps(stats)
    vocab = stats["vocab"]["ehr"]
    assert "COMMON//HELD_BY_K" in vocab["codes"] and vocab["suppressed"] >= 1
    assert min(vocab["patients"]) >= k
    loaded = load_site(site, _cfg(ehr_vocab_min_patients=k), stats=stats)
    assert (loaded.train.inputs["ehr"][..., 0] == UNKNOWN).any()  # the rare code reaches the model only as unknown
    assert any("outside the federated vocabulary" in n for n in loaded.report.summary["notes"])


def test_combined_vocabulary_is_the_top_k_and_normalises_per_code(meds_fed):
    cfg = _cfg(ehr_vocab_min_patients=1)
    parts = [site_stats(meds_fed / s, cfg) for s in ("hospital_a", "hospital_b")]
    both = combine_stats(parts, vocab_size=5)
    v = both["vocab"]["ehr"]
    assert len(v["codes"]) == 5 and v["sites"] == 2 and v["patients"] == sorted(v["patients"], reverse=True)
    full = combine_vocab([p["vocab"]["ehr"] for p in parts], None)
    hr = full["codes"].index("ICU//Heart Rate")
    a, b = (p["vocab"]["ehr"] for p in parts)
    assert full["sum"][hr] == pytest.approx(a["sum"][a["codes"].index("ICU//Heart Rate")]
                                            + b["sum"][b["codes"].index("ICU//Heart Rate")])
    loaded = load_site(meds_fed / "hospital_a", cfg, stats=combine_stats(parts))
    x = loaded.train.inputs["ehr"]
    j = FIRST_CODE + combine_stats(parts)["vocab"]["ehr"]["codes"].index("ICU//Heart Rate")
    z = x[..., 1][x[..., 0] == j]
    assert abs(float(z.mean())) < 0.5 and 0.5 < float(z.std()) < 1.5  # standardized with the federated stats


@pytest.mark.parametrize("name", ["bag_of_codes", "event_gru", "code_stats"])
def test_event_encoders_shape_and_missing_input(name):
    cfg = Config().replace(modalities="ehr", ehr_event_encoder=name, embed_dim=8, encoder_hidden=8,
                           ehr_vocab_size=20)
    spec = ModalitySpec("ehr", KIND_EVENTS, (6, 4))
    enc = build_encoder(spec, cfg)
    x = torch.zeros(3, 6, 4)
    x[0, 3:] = torch.tensor([[2, 0.5, 1, 3], [5, 0, 0, 2], [21, -1.0, 1, 2]])
    out = enc(x)
    assert out.shape == (3, 8)
    assert torch.allclose(out[1], out[2])  # missing EHR (all padding): one constant embedding
    assert not torch.allclose(out[0], out[1])


def test_code_stats_summaries_equal_hand_computed_per_code_values():
    cfg = Config().replace(modalities="ehr", ehr_event_encoder="code_stats", embed_dim=8, encoder_hidden=8,
                           ehr_vocab_size=4)
    enc = build_encoder(ModalitySpec("ehr", KIND_EVENTS, (6, 4)), cfg)
    x = torch.zeros(1, 6, 4)
    # code 2: values 1.0 (20 h before: bucket 6) and 3.0 (1 h: bucket 3); code 3: one value-less event; 2 padding
    x[0, 2:] = torch.tensor([[2, 1.0, 1, 6], [3, 0.0, 0, 2], [2, 3.0, 1, 3], [2, 0.0, 0, 4]])
    stats, total = enc.summaries(x)
    assert float(total) == 4
    c2, c3 = stats[0, 2], stats[0, 3]
    assert torch.allclose(c2, torch.tensor([math.log1p(3), 3 / 4, 2.0, 3.0, 1.0]))  # count, share, mean, recent, earlier
    assert torch.allclose(c3, torch.tensor([math.log1p(1), 1 / 4, 0.0, 0.0, 0.0]))
    assert (stats[0, 0] == 0).all() and (stats[0, 4:] == 0).all()  # padding row and absent codes


def test_prediction_time_from_a_cohort_column_and_patients_without_ehr(site):
    import pandas as pd
    import yaml

    labels = _labels(site)
    cohort = pd.read_csv(site / "cohort.csv", dtype=str, keep_default_na=False)
    cohort["prediction_time"] = [labels[int(s)]["prediction_time"].isoformat() if s else "" for s in cohort["ehr"]]
    cohort.loc[:4, "ehr"] = ""  # five patients without EHR
    cohort.to_csv(site / "cohort.csv", index=False)
    desc = yaml.safe_load((site / "site.yaml").read_text())
    desc["modalities"]["ehr"] = {"type": "ehr-meds", "root": "meds", "prediction-time-column": "prediction_time"}
    (site / "site.yaml").write_text(yaml.safe_dump(desc))
    report = validate_site(site, _cfg())
    assert report.ok, report.format()
    assert report.summary["availability"]["ehr"] == len(cohort) - 5
    loaded = load_site(site, _cfg(ehr_vocab_min_patients=1))
    for split in loaded.splits.values():
        missing = ~split.present[:, 0]
        assert (split.inputs["ehr"][missing] == 0).all()
    assert sum(int((~s.present[:, 0]).sum()) for s in loaded.splits.values()) == 5


def test_synth_meds_is_byte_identical_for_one_seed(tmp_path):
    import hashlib

    def digest(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}
    a = generate_federation("smoke", 1, tmp_path / "a", seed=4, ehr_format="meds")
    b = generate_federation("smoke", 1, tmp_path / "b", seed=4, ehr_format="meds")
    assert digest(a) == digest(b) and any(k.endswith(".parquet") for k in digest(a))

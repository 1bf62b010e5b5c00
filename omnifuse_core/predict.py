"""Apply a trained run to a site: load the model weights-only and write one prediction row per patient.

The run directory is the one every mode writes (``config.yaml``, ``metrics.json``, ``checkpoints/``). Weights are
read from safetensors (never pickle); the model is rebuilt from the checkpoint's ``specs`` and ``task``. Local runs
hold one checkpoint per site under ``checkpoints/<site>/``: pick it with ``site=``.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import yaml
from safetensors import SafetensorError

from .batch import ModalitySpec, MultimodalDataset, TaskSpec
from .config import Config
from .trainer import iterate_batches, resolve_device

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


class RunMismatchError(ValueError):
    """A site (or a run folder) does not fit the trained model; the message says what differs and what to do."""


@dataclass
class Predictions:
    """Per-patient outputs of one model on one dataset (all arrays have N rows, in dataset order).

    Args:
        patient_ids: the dataset's patient ids (kept at the site).
        score: ``Task.score`` of the configured prediction: P(y=1) ``[N]``, class/label probabilities ``[N, K]``
            or survival risk ``[N]`` (higher = earlier event).
        heads: modality -> that modality head's score (OmniFuse family only).
        present: bool ``[N, M]``, the modalities each patient really has.
        imputed: bool ``[N, M]``, missing at input and completed by the imputer.
        labels: the dataset's labels (numpy; used only by reports, never by the prediction).
        embedding: fused patient embedding ``[N, D]`` (joint latent) or None.
        split: split name per row.
    """

    patient_ids: list[str]
    score: np.ndarray
    heads: dict[str, np.ndarray]
    present: np.ndarray
    imputed: np.ndarray
    labels: np.ndarray
    embedding: Optional[np.ndarray] = None
    split: list[str] = field(default_factory=list)


def run_checkpoint_dir(run_dir: Path, site: Optional[str] = None) -> Path:
    """The checkpoint folder of a run (``checkpoints/`` or, for local runs, ``checkpoints/<site>/``)."""
    ckpts = Path(run_dir) / "checkpoints"
    if (ckpts / "latest.json").is_file() and site is None:
        return ckpts
    per_site = sorted(p.name for p in ckpts.glob("*/") if (p / "latest.json").is_file())
    if site is not None:
        if (ckpts / site / "latest.json").is_file():
            return ckpts / site
        if (ckpts / "latest.json").is_file():
            return ckpts  # one global model serves every site
        raise FileNotFoundError(f"{ckpts}: no checkpoint for site '{site}'; this run has {per_site or 'none'}")
    if len(per_site) == 1:
        return ckpts / per_site[0]
    if per_site:
        raise ValueError(f"{ckpts}: this local run has one model per site {per_site}; choose one with site=NAME")
    raise FileNotFoundError(f"{ckpts}: no checkpoint (latest.json) found; is {run_dir} a finished run directory?")


def load_run_config(run_dir: Path) -> Config:
    """The resolved config a run was trained with (``RUN/config.yaml``)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; give a run directory written by `omnifuse train`")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from exc
    return Config.from_flat(data, strict=False)


def load_run_model(run_dir: str | Path, site: Optional[str] = None):
    """Rebuild a run's model from its final checkpoint (``final.json``, else ``latest.json``; weights-only:
    safetensors + JSON state).

    Args:
        run_dir: the run directory.
        site: for local runs, whose model to load (optional when the run has a single model).

    Returns:
        ``(model, cfg, meta)``; ``meta`` holds ``run_id``, ``config_digest``, ``round``, ``mode``, ``fusion``,
        ``prediction_mode``, ``specs`` (list of ModalitySpec), ``task`` (TaskSpec), ``stats`` (or None) and
        ``checkpoint`` (the weights file).
    """
    from safetensors.numpy import load_file

    from .models import build_model
    from .weights import set_trainable

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    ckpt_dir = run_checkpoint_dir(run_dir, site)
    try:
        # final.json: the model the run's final test used (config key final-model); older runs have only latest
        chosen = ckpt_dir / "final.json" if (ckpt_dir / "final.json").is_file() else ckpt_dir / "latest.json"
        pointer = json.loads(chosen.read_text())
        state = json.loads((ckpt_dir / pointer["state"]).read_text())
        weights = {k: v for k, v in load_file(str(ckpt_dir / pointer["weights"])).items()
                   if not k.startswith("strategy/")}
        specs = [ModalitySpec.from_dict(d) for d in state["specs"]]
        task = TaskSpec.from_dict(state["task"])
    except (OSError, KeyError, ValueError, SafetensorError) as exc:
        raise ValueError(f"{ckpt_dir}: unreadable checkpoint ({exc}); re-run training or point at another run") from exc
    model = build_model(specs, task, cfg)
    set_trainable(model, weights)
    mode = state.get("prediction_mode") or None
    if mode and hasattr(model, "prediction_mode"):
        model.prediction_mode = mode
    model.eval()
    metrics_digest = None
    if (run_dir / "metrics.json").is_file():
        metrics_digest = json.loads((run_dir / "metrics.json").read_text()).get("config_digest")
    meta = {"run_id": run_dir.resolve().name, "config_digest": state.get("config_digest") or metrics_digest
            or cfg.digest(), "round": state.get("round", pointer.get("round")), "mode": state.get("mode"),
            "fusion": state.get("fusion", cfg.fusion), "prediction_mode": getattr(model, "prediction_mode", None),
            "specs": specs, "task": task, "stats": _saved_stats(run_dir, ckpt_dir),
            "checkpoint": str(ckpt_dir / pointer["weights"]), "sites": state.get("sites")}
    return model, cfg, meta


def _saved_stats(run_dir: Path, ckpt_dir: Path) -> Optional[dict]:
    for path in (ckpt_dir / "federation.json", run_dir / "checkpoints" / "federation.json"):
        if path.is_file():
            return json.loads(path.read_text()).get("stats")
    return None


def check_site_matches(site_dir: Path, model_specs: list[ModalitySpec], site_specs: list[ModalitySpec],
                       declared: list[str]) -> None:
    """Refuse a site whose modalities or input shapes differ from the model's (one sentence, raises)."""
    wanted = [s.name for s in model_specs]
    if not set(declared) & set(wanted):
        raise RunMismatchError(f"site {site_dir} declares modalities {sorted(declared)} in site.yaml but the model "
                               f"uses {wanted}; it shares none of them, so the model cannot be applied here")
    have = {s.name: s for s in site_specs}
    diffs = [f"'{s.name}' is {have[s.name].kind} {list(have[s.name].shape)} here but {s.kind} {list(s.shape)} "
             f"in the model" for s in model_specs if s.name in have and have[s.name] != s]
    diffs += [f"'{n}' is missing" for n in wanted if n not in have]
    if diffs:
        raise RunMismatchError(f"site {site_dir} does not match the model's feature schema ({'; '.join(diffs)}); "
                               "prepare the site with the run's image-size/image-channels/genomics genes or use a "
                               "model trained on this schema")


def load_site_for_run(site_dir: str | Path, cfg: Config, meta: dict, *, stats: Optional[dict] = None):
    """Load a site with the run's config and statistics and check it against the model's specs."""
    from .data.descriptor import parse_descriptor
    from .data.site import load_site

    site_dir = Path(site_dir)
    desc, _ = parse_descriptor(site_dir)
    declared = list(desc.modalities) if desc is not None else []
    if desc is not None:
        wanted = {s.name for s in meta["specs"]}
        if not set(declared) & wanted:
            check_site_matches(site_dir, meta["specs"], [], declared)  # raises: no shared modality
        extra = sorted(set(declared) - wanted)
        if extra:
            log.warning("site %s: modalities %s are not used by this model and are ignored", site_dir, extra)
    stats = stats if stats is not None else meta.get("stats")
    if stats is None:
        log.info("run has no saved standardization statistics; using site %s's own", site_dir)
    site = load_site(site_dir, cfg, stats=stats)
    check_site_matches(site_dir, meta["specs"], site.specs, declared or [s.name for s in site.specs])
    return site


@torch.no_grad()
def predict_dataset(model, ds: MultimodalDataset, cfg: Config, *, split: str = "") -> Predictions:
    """Label-free per-patient outputs of ``model`` on ``ds`` (see :class:`Predictions`)."""
    device = resolve_device(cfg)
    model.to(device).eval()
    score, emb, heads = [], [], {n: [] for n in getattr(model, "names", [])}
    has_heads = hasattr(model, "predict_all")
    has_emb = hasattr(model, "complete") and hasattr(model, "encode")
    for batch in iterate_batches(ds, max(256, cfg.batch_size), device):
        inputs, present = batch["inputs"], batch["present"]
        score.append(model.task.score(model.predict_proba(inputs, present)).cpu())
        if has_heads:
            out = model.predict_all(inputs, present)
            for n in heads:
                heads[n].append(model.task.score(out[f"head:{n}"]).cpu())
        if has_emb:
            v = model.encode(inputs, present)
            emb.append(model.complete(v, v, present)[3].cpu())
    present = ds.present.numpy().astype(bool)
    imputes = bool(getattr(model, "impute", False))
    return Predictions(
        patient_ids=list(ds.patient_ids), present=present, imputed=(~present) & imputes, labels=ds.labels.numpy(),
        score=torch.cat(score).numpy() if score else np.zeros((0,)),
        heads={n: torch.cat(v).numpy() for n, v in heads.items() if v},
        embedding=torch.cat(emb).numpy() if emb else None, split=[split] * len(ds))


def predictions_frame(pred: Predictions, names: list[str], task: TaskSpec, meta: dict):
    """One row per patient: id, split, prediction, present/imputed flags, per-head scores, mode, run id, digest."""
    import pandas as pd

    main = "risk" if task.kind == "survival" else "probability"
    cols: dict = {"patient_id": pred.patient_ids, "split": pred.split}
    cols.update(_spread(main, pred.score, task))
    for m, name in enumerate(names):
        cols[f"present_{name}"] = pred.present[:, m].astype(int)
        cols[f"imputed_{name}"] = pred.imputed[:, m].astype(int)
    for name, value in pred.heads.items():
        cols.update(_spread(f"head_{name}", value, task))
    n = len(pred.patient_ids)
    cols.update({"prediction_mode": [meta.get("prediction_mode") or "joint"] * n,
                 "run_id": [meta.get("run_id")] * n, "config_digest": [meta.get("config_digest")] * n})
    return pd.DataFrame(cols)


def _spread(name: str, arr: np.ndarray, task: TaskSpec) -> dict:
    arr = np.asarray(arr)
    if arr.ndim == 1:
        return {name: arr}
    if arr.shape[1] == 1:
        return {name: arr[:, 0]}
    labels = list(task.label_names) if task.kind == "multilabel" and len(task.label_names) == arr.shape[1] \
        else [f"class{k}" for k in range(arr.shape[1])]
    return {f"{name}_{lab}": arr[:, k] for k, lab in enumerate(labels)}


def predict_site(run_dir: str | Path, site_dir: str | Path, out_csv: str | Path, *,
                 site: Optional[str] = None) -> Path:
    """Apply a trained run to every patient of a site folder and write a CSV (one row per patient).

    Args:
        run_dir: the trained run directory.
        site_dir: the site folder (docs/data-format.md); its modalities and shapes must match the model.
        out_csv: the CSV file to write.
        site: for local runs, whose model to use (default: the site folder's own model, else the only one).

    Returns:
        The CSV path.

    Raises:
        RunMismatchError: the site's modalities or feature schema differ from the model's.
    """
    import pandas as pd

    site_dir = Path(site_dir)
    if site is None and not (Path(run_dir) / "checkpoints" / "latest.json").is_file():
        from .data.descriptor import parse_descriptor
        desc, _ = parse_descriptor(site_dir)
        site = desc.name if desc is not None else None
    model, cfg, meta = load_run_model(run_dir, site)
    data = load_site_for_run(site_dir, cfg, meta)
    frames = [predictions_frame(predict_dataset(model, data.splits[s], cfg, split=s), model.names, meta["task"], meta)
              for s in SPLITS if len(data.splits[s])]
    if not frames:
        raise ValueError(f"site {site_dir}: no usable patient rows to predict; run `omnifuse check-site {site_dir}`")
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    table = pd.concat(frames, ignore_index=True)
    table.to_csv(out_csv, index=False)
    log.info("predictions for %d patients of site %s written to %s", len(table), data.name, out_csv)
    return out_csv

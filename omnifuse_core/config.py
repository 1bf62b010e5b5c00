"""Typed configuration for OmniFuse-FL.

Every setting has exactly one name. In Python it is the snake_case field of :class:`Config`; in YAML files and in
Flower's run config (``[tool.flwr.app.config]`` / ``flwr run . --run-config``) it is the same name with hyphens
(``local_epochs`` <-> ``local-epochs``). Values are scalars only (str, int, float, bool) so that every key is a
valid Flower run-config value; lists are comma-separated strings (``modalities: "ehr,image,text,genomics"``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


ADAPTIVE = "adaptive"  # max-grad-norm: adaptive (omnifuse_core.privacy.adaptive_clip)
TRACKER_NAMES = ("none", "tensorboard")  # omnifuse_core.tracking.TRACKERS (a test keeps the two equal)


class ConfigError(ValueError):
    """A configuration value is unknown or invalid; the message names the key and what to do."""


@dataclass
class Config:
    """All settings of a run. See ``docs/configuration.md`` for the meaning of each key."""

    # --- task and data -------------------------------------------------------------------------------------
    task: str = "binary"  # binary | multiclass | multilabel | survival
    modalities: str = "ehr,image,text,genomics"  # order fixes the modality index m
    on_invalid: str = "fail"  # fail | skip : what training does with an invalid modality entry
    image_size: int = 64
    image_channels: int = 1  # 1 (grayscale) | 3 (RGB): every site's images are converted to this
    ehr_step_hours: float = 2.0
    ehr_max_hours: float = 48.0
    ehr_max_events: int = 256  # ehr-meds: the most recent events per patient (before its prediction time) the encoder sees
    ehr_look_back_hours: float = 0.0  # ehr-meds: only events this many hours before the prediction time (0 = whole history)
    ehr_vocab_size: int = 1024  # ehr-meds: codes in the federated vocabulary (top-K by patients, summed over sites)
    ehr_vocab_min_patients: int = 10  # ehr-meds: small-cell suppression k: a code with fewer training patients never leaves its site
    text_model_path: str = ""  # local Hugging Face folder; "" = the bundled all-MiniLM-L6-v2
    text_max_length: int = 128
    survival_bins: int = 4
    survival_loss: str = "nll"  # nll (discrete-time hazards) | cox (partial likelihood, risk sets within a batch)
    genomics_genes: str = ""  # gene order shared by all sites: comma-separated names or a file (one per line)
    genomics_gene_policy: str = "union"  # without genomics-genes: union | intersection of the sites' genes
    genomics_min_overlap: float = 0.5  # a site holding fewer of the shared genes than this fraction is refused
    val_fraction: float = 0.15  # used only when the cohort table has no split column
    test_fraction: float = 0.15
    split_seed: int = 0  # seed of the random split (no split column); apart from `seed`, which seeds the model

    # --- model ---------------------------------------------------------------------------------------------
    fusion: str = "omnifuse"  # omnifuse | dwfuse | concat | sum | late | se_gate | moddrop | healnet
    embed_dim: int = 128
    encoder_hidden: int = 64
    ehr_encoder: str = "gru"  # gru | lstm | tcn | summary (sequence); tabular EHR: mlp, or linear if set here
    ehr_event_encoder: str = "code_stats"  # ehr-meds event sequences: code_stats | bag_of_codes | event_gru
    image_encoder: str = "small_cnn"  # small_cnn | pooled (8x8 average pool + linear) | resnet18 | resnet34
    image_checkpoint: str = ""  # optional weights-only checkpoint for the image backbone
    genomics_encoder: str = "snn"  # snn | mlp | linear
    genomics_input_dropout: float = 0.0  # dropout on the genes before the genomics encoder (p >> n regulariser)
    text_encoder: str = "projection"  # projection (MLP head) | linear, over the frozen text model's cached embeddings
    dp_compatible: bool = False  # build DP-compatible layers (DPGRU/DPLSTM, GroupNorm) even without DP
    head_hidden: int = 64
    joint_head: str = "bilinear"  # bilinear (MLP + low-rank products of modality pairs) | mlp (concat and omnifuse)
    joint_input: str = "latents"  # omnifuse's g_rp reads: latents (the CRA latents, the paper) | latents+embeddings
    interaction_rank: int = 2  # width of each modality pair's product (joint-head: bilinear)
    unimodal_loss: float = 0.0  # concat: weight of the auxiliary per-modality heads' loss (patients with the modality)
    dwfuse_floor: float = 0.0  # omnifuse: κ in ω' = κ + (1 − κ)·ω, so a weak modality's head keeps learning

    # --- OmniFuse method (DESIGN §4) -----------------------------------------------------------------------
    cra_blocks: int = 5  # K
    cra_hidden: str = "256,128,64"  # each RA is D -> 256 -> 128 -> 64 -> 128 -> 256 -> D
    hide_prob: float = 1.0  # probability that a training sample with >=2 present modalities gets simulated missingness
    hide_for_prediction: bool = False  # false: hidden view feeds L_forward/L_backward only; true: also L_enc, ω, L_rp, L_TLA (ModDrop-like, pre-issue-13)
    imputation_reduction: str = "mean"  # sum | mean: squared imputation error summed (the paper's ‖v′ − v̂‖²) or averaged over slot elements
    use_forward: bool = True
    use_backward: bool = True
    use_dwfuse: bool = True
    use_tla: bool = True
    lambda_backward: float = 1.0  # lambda_1
    lambda_dwfuse: float = 10.0  # lambda_2
    lambda_tla: float = 0.5  # lambda_3
    tla_min_samples: int = 10  # F: a combination's score is sum / max(n, F) over its n eligible samples
    alpha: float = 0.1
    beta: float = 0.5
    prediction: str = "auto"  # joint | heads | both | auto (chosen on validation, recorded)
    moddrop_prob: float = 0.25
    healnet_latents: int = 16
    healnet_layers: int = 2
    healnet_heads: int = 4

    # --- local training ------------------------------------------------------------------------------------
    seed: int = 0  # model initialisation, shuffling, simulated missingness (the patient split: split-seed)
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    proximal_mu: float = 0.0  # FedProx proximal term (client side); 0 disables

    # --- federation ----------------------------------------------------------------------------------------
    rounds: int = 3
    final_model: str = "last"  # last | best-val: the model that gets the final test and is saved for predict
    early_stopping: int = 0  # stop after this many rounds without a better validation metric (0 = off; use with best-val)
    strategy: str = "modality_aware"  # modality_aware | fedavg | fedprox | fedadam | fedyogi | trimmed_mean | median
    min_sites: int = 1  # SuperNodes that must be connected before setup and before each round starts
    min_train_replies: int = 1  # valid site updates a round needs to be aggregated (else the model is kept)
    round_timeout: float = 3600.0  # seconds the server waits for a round's replies; late sites count as missing
    site_cache: bool = True  # a site writes its loaded tensors under state-dir/site-cache for later messages
    fused_evaluate: bool = True  # validation rides on the next round's train exchange (one exchange per round)
    poll_interval: float = 0.1  # seconds between the ServerApp's pulls for replies (Flower's own: a fixed 3 s)
    fraction_train: float = 1.0
    server_lr: float = 0.01
    trim_fraction: float = 0.2
    max_update_norm: float = 1e4
    secure_aggregation: bool = False  # Flower SecAgg+: the server sees only the sum of the site updates (docs/privacy.md)
    secagg_num_shares: float = 1.0  # SecAgg+ key shares per site: a fraction (<= 1) of the round's sites or a count >= 3
    secagg_reconstruction_threshold: float = 0.67  # shares to unmask: a fraction (<= 1) of the shares or a count >= 2
    secagg_clipping_range: float = 8.0  # SecAgg+ clips each uploaded (count-weighted update) entry to +-this
    secagg_quantization_range: int = 16777216  # 2**24 integer levels over [-clip, clip] (step 2*clip/range)
    threshold_rule: str = "youden"  # binary decisions (F1, sensitivity, ...): youden | max-f1 | fixed, chosen on validation
    threshold: float = 0.5  # the decision threshold with threshold-rule: fixed (and where validation cannot choose one)
    score_bins: int = 1000  # binary test: score bins a site counts its patients in, for the pooled AUROC (final.pooled_binned)
    bootstrap_reps: int = 200  # survival test: bootstrap resamples per site for the pooled C-index interval (0 = none)
    data_root: str = ""  # simulation: partition-id -> site folder listed in DATA_ROOT/federation.yaml
    run_dir: str = ""  # absolute output folder for server-side artefacts
    tracking: str = "none"  # none | tensorboard: also write the rounds' metrics as TensorBoard events in RUN/tensorboard

    # --- privacy (DESIGN §6) -------------------------------------------------------------------------------
    dp: bool = False
    target_epsilon: float = 8.0
    delta: float = 1e-5
    max_grad_norm: float | str = 1.0  # per-sample clip norm C, or adaptive (Andrew et al. 2021; the clip-* keys, docs/privacy.md)
    clip_quantile: float = 0.5  # adaptive clipping: target fraction γ of per-sample gradients left unclipped
    clip_initial: float = 1.0  # adaptive clipping: initial clip norm C_0 (later rounds of a run resume from the last C)
    clip_learning_rate: float = 0.2  # adaptive clipping: η_C of the geometric update C ← C·exp(−η_C·(b̃ − γ))
    clip_count_noise: float = 0.0  # adaptive clipping: std σ_b of the unclipped-count noise; 0 = expected batch size / 20
    noise_multiplier: float = 0.0  # 0 = calibrate once for the planned schedule
    planned_rounds: int = 0  # 0 = use `rounds`
    accountant: str = "prv"  # headline accountant: prv | rdp
    dp_grad_sample_mode: str = "hooks"  # Opacus per-sample gradients: hooks | functorch (same values; B6b times both)
    dp_preflight: str = "error"  # error | warn | off: what a hopeless pre-flight noise-to-signal ratio does
    dp_max_noise_ratio: float = 5.0  # pre-flight limit on sigma*sqrt(P)/B per step (docs/privacy.md; measured in B5)
    dp_schedule: str = "fixed"  # fixed: batch-size as given | auto: each site picks its batch from epsilon, N, P (docs/privacy.md)
    tla_noise_scale: float = 20.0  # Laplace scale b of TLA report-noisy-max, 2/b per selection; 0 = auto (docs/privacy.md)
    tla_epsilon_share: float = 0.1  # with tla-noise-scale 0: the share of target-epsilon TLA's selections may spend
    central_dp: bool = False
    central_noise_multiplier: float = 1.0
    central_clip_norm: float = 1.0

    # ------------------------------------------------------------------------------------------------------
    @property
    def modality_list(self) -> list[str]:
        return [m.strip() for m in self.modalities.split(",") if m.strip()]

    @property
    def adaptive_clip(self) -> bool:
        """``max-grad-norm: adaptive``: the clip norm follows a quantile of the per-sample gradient norms."""
        return isinstance(self.max_grad_norm, str) and self.max_grad_norm == ADAPTIVE

    @property
    def cra_hidden_list(self) -> list[int]:
        return [int(x) for x in self.cra_hidden.split(",") if x.strip()]

    def validate(self) -> "Config":
        choices = {
            "task": ("binary", "multiclass", "multilabel", "survival"),
            "on_invalid": ("fail", "skip"),
            "prediction": ("joint", "heads", "both", "auto"),
            "accountant": ("prv", "rdp"),
            "dp_preflight": ("error", "warn", "off"),
            "dp_schedule": ("fixed", "auto"),
            "genomics_gene_policy": ("union", "intersection"),
            "survival_loss": ("nll", "cox"),
            "dp_grad_sample_mode": ("hooks", "functorch"),
            "final_model": ("last", "best-val"),
            "imputation_reduction": ("sum", "mean"),
            "threshold_rule": ("youden", "max-f1", "fixed"),
            "tracking": TRACKER_NAMES,
            "joint_head": ("mlp", "bilinear"),
            "joint_input": ("latents", "latents+embeddings"),
            "ehr_event_encoder": ("bag_of_codes", "event_gru", "code_stats"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"config key '{_ext(key)}' = {getattr(self, key)!r}; expected one of {allowed}")
        if not self.modality_list:
            raise ConfigError("config key 'modalities' is empty; list at least one modality, e.g. 'ehr,image'")
        if len(set(self.modality_list)) != len(self.modality_list):
            raise ConfigError(f"config key 'modalities' repeats a name: {self.modalities!r}")
        for key in ("batch_size", "local_epochs", "embed_dim", "cra_blocks", "rounds", "min_sites",
                    "min_train_replies", "tla_min_samples", "score_bins", "ehr_max_events", "ehr_vocab_size",
                    "ehr_vocab_min_patients"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key '{_ext(key)}' must be >= 1, got {getattr(self, key)}")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"config key 'threshold' must lie in (0, 1), got {self.threshold}")
        if self.early_stopping < 0:
            raise ConfigError(f"config key 'early-stopping' is a patience in rounds (0 = off), got {self.early_stopping}")
        if self.ehr_look_back_hours < 0:
            raise ConfigError(f"config key 'ehr-look-back-hours' must be >= 0 (0 = whole history), got "
                              f"{self.ehr_look_back_hours}")
        if self.bootstrap_reps < 0:
            raise ConfigError(f"config key 'bootstrap-reps' must be >= 0 (0 = no interval), got {self.bootstrap_reps}")
        if not 0 < self.poll_interval <= 10:
            raise ConfigError(f"config key 'poll-interval' must lie in (0, 10] seconds, got {self.poll_interval}")
        if not self.round_timeout > 0:
            raise ConfigError(f"config key 'round-timeout' must be > 0 seconds, got {self.round_timeout}")
        if not 0.0 <= self.genomics_input_dropout < 1.0:
            raise ConfigError(f"genomics-input-dropout must lie in [0, 1), got {self.genomics_input_dropout}")
        if self.interaction_rank < 1 or self.unimodal_loss < 0 or not 0.0 <= self.dwfuse_floor < 1.0:
            raise ConfigError(f"need interaction-rank >= 1, unimodal-loss >= 0 and 0 <= dwfuse-floor < 1; got "
                              f"{self.interaction_rank}, {self.unimodal_loss}, {self.dwfuse_floor}")
        if not 0.0 <= self.hide_prob <= 1.0:
            raise ConfigError(f"config key 'hide-prob' must lie in [0, 1], got {self.hide_prob}")
        if self.image_channels not in (1, 3):
            raise ConfigError(f"config key 'image-channels' must be 1 or 3, got {self.image_channels}")
        if self.tla_noise_scale < 0 or not 0 < self.tla_epsilon_share < 1:
            raise ConfigError(f"config keys 'tla-noise-scale' must be >= 0 (0 = auto) and 'tla-epsilon-share' in (0, 1), "
                              f"got {self.tla_noise_scale} and {self.tla_epsilon_share}")
        if self.dp and self.task == "survival" and self.survival_loss == "cox":
            raise ConfigError("survival-loss: cox couples the patients of a batch (risk sets), so DP-SGD's per-sample "
                              "clipping would not bound one patient's influence; use survival-loss: nll with dp: true")
        if self.secure_aggregation:
            from .secure_sum import secure_config_problem

            problem = secure_config_problem(self.strategy, self.central_dp, self.secagg_num_shares,
                                            self.secagg_reconstruction_threshold, self.secagg_clipping_range,
                                            self.secagg_quantization_range)
            if problem:
                raise ConfigError(f"secure-aggregation: {problem}")
        if isinstance(self.max_grad_norm, str) and self.max_grad_norm != ADAPTIVE:
            raise ConfigError(f"config key 'max-grad-norm' = {self.max_grad_norm!r}; give the clip norm C (a number "
                              f"> 0) or '{ADAPTIVE}'")
        if not 0.0 < self.clip_quantile < 1.0:
            raise ConfigError(f"config key 'clip-quantile' is the target unclipped fraction and must lie in (0, 1), got "
                              f"{self.clip_quantile}")
        for key in ("clip_initial", "clip_learning_rate"):
            if not (math.isfinite(getattr(self, key)) and getattr(self, key) > 0):
                raise ConfigError(f"config key '{_ext(key)}' must be a finite number > 0, got {getattr(self, key)}")
        if not (math.isfinite(self.clip_count_noise) and self.clip_count_noise >= 0):
            raise ConfigError(f"config key 'clip-count-noise' must be >= 0 (0 = expected batch size / 20), got "
                              f"{self.clip_count_noise}")
        if self.dp_schedule == "auto" and self.noise_multiplier > 0:
            raise ConfigError(f"config key 'dp-schedule' = 'auto' calibrates sigma for the batch it picks, but "
                              f"'noise-multiplier' = {self.noise_multiplier:g} fixes sigma; set noise-multiplier: 0 "
                              "or dp-schedule: fixed")
        if self.dp and not (0 < self.delta < 1):
            raise ConfigError(f"config key 'delta' must lie in (0, 1), got {self.delta}")
        return self

    # --- conversion ----------------------------------------------------------------------------------------
    def to_flat(self) -> dict[str, Any]:
        """External (hyphenated) flat mapping: the YAML file and the Flower run config."""
        return {_ext(f.name): getattr(self, f.name) for f in fields(self)}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_flat(), sort_keys=True).encode()).hexdigest()[:16]

    def with_overrides(self, items: "Sequence[str]") -> "Config":
        """This config with ``KEY=VALUE`` overrides applied (the CLI's and the benchmarks' ``--set``).

        Raises:
            ConfigError: an item without ``=``, an unknown key or a bad value.
        """
        pairs = {}
        for item in items:
            if "=" not in item:
                raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set local-epochs=2")
            key, value = item.split("=", 1)
            pairs[key.strip()] = value.strip()
        return Config.from_flat(pairs, base=self) if pairs else self

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes).validate()

    @classmethod
    def from_flat(cls, mapping: Mapping[str, Any], *, base: "Config | None" = None, strict: bool = True) -> "Config":
        """Build from hyphenated or snake_case keys; values are coerced to the field's type.

        Unknown keys raise :class:`ConfigError` when ``strict`` (YAML files); Flower run configs may carry
        extra Flower keys and use ``strict=False``.
        """
        base = base or cls()
        known = {f.name: f for f in fields(cls)}
        changes: dict[str, Any] = {}
        for raw_key, value in mapping.items():
            key = str(raw_key).replace("-", "_")
            if key not in known:
                if strict:
                    raise ConfigError(f"unknown config key '{raw_key}'; see docs/configuration.md for valid keys")
                continue
            changes[key] = _clip_norm(value) if key == "max_grad_norm" else _coerce(key, value, type(getattr(base, key)))
        return dataclasses.replace(base, **changes).validate()

    @classmethod
    def load(cls, path_or_name: str | Path, **overrides: Any) -> "Config":
        """Load a YAML file, or a shipped config by name (``smoke``, ``demo``, ``smoke-dp``)."""
        path = resolve_config_path(path_or_name)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys at top level")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_flat(data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_flat(), sort_keys=False))


def resolve_config_path(path_or_name: str | Path) -> Path:
    path = Path(path_or_name)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / f"{path_or_name}.yaml"
    if shipped.is_file():
        return shipped
    raise ConfigError(f"config '{path_or_name}' not found: give a YAML file or one of "
                      f"{sorted(p.stem for p in CONFIG_DIR.glob('*.yaml'))}")


def _ext(name: str) -> str:
    return name.replace("_", "-")


def _clip_norm(value: Any) -> "float | str":
    """``max-grad-norm``: a number (the fixed clip norm C, read as before) or the word ``adaptive``."""
    if isinstance(value, str) and value.strip().lower() == ADAPTIVE:
        return ADAPTIVE
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config key 'max-grad-norm': cannot read {value!r} as a number; give the clip norm C "
                          f"(a number > 0) or '{ADAPTIVE}'") from exc


def _coerce(key: str, value: Any, typ: type) -> Any:
    try:
        if typ is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes", "on"):
                    return True
                if value.lower() in ("false", "0", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if typ is str and isinstance(value, (list, tuple)):
            return ",".join(str(v) for v in value)
        return typ(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config key '{_ext(key)}': cannot read {value!r} as {typ.__name__}") from exc

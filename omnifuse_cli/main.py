"""``omnifuse`` — synth, check-site, train, demo, predict, privacy-report, import-mimic.

Errors are one clear sentence (exit code 2) unless ``--debug`` is given, which shows the traceback.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from omnifuse_core.config import Config, ConfigError

from .run_configs import check_config
from .run_configs import load_config as _config

log = logging.getLogger("omnifuse")
_NOISY = ("transformers", "urllib3", "filelock", "matplotlib", "PIL", "opacus", "flwr", "ray")


def setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in _NOISY:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool, debug: bool) -> None:
    """OmniFuse-FL: federated multimodal training with missing modalities.

    \b
    Example:
      omnifuse demo --out runs/demo
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    setup_logging(verbose, quiet)


@cli.command()
@click.option("--preset", default="demo", show_default=True,
              help="smoke | demo | demo-x5 | laziness | extreme-missing | reliability (docs/synthetic-data.md)")
@click.option("--sites", type=int, default=None, help="Number of hospitals (default: the preset's).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder for the federation.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing synthetic federation in --out.")
@click.option("--ehr-format", type=click.Choice(["csv", "meds"]), default="csv", show_default=True,
              help="EHR as per-stay CSVs (MIMIC-benchmark layout) or as a MEDS root per site (ehr-meds).")
def synth(preset: str, sites: int | None, out: Path, seed: int, overwrite: bool, ehr_format: str) -> None:
    """Generate a synthetic federation: site folders, federation.yaml and oracle.json.

    \b
    Example:
      omnifuse synth --preset laziness --sites 4 --out data/laziness --seed 0
      omnifuse synth --preset smoke --sites 3 --out data/smoke-meds --ehr-format meds
    """
    from sim.generator import generate_federation
    path = generate_federation(preset, sites, out, seed=seed, overwrite=overwrite, ehr_format=ehr_format)
    click.echo(f"synthetic federation written to {path} (oracle: {path / 'oracle.json'})")


@cli.command("check-site")
@click.argument("site_dir", type=click.Path(path_type=Path))
@click.option("--config", default=None, help="Config (name or YAML) whose modalities/task to check against.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key (repeatable), as for `omnifuse train`: the check then sees the run's "
                   "modalities, task and split.")
def check_site(site_dir: Path, config: str | None, overrides: tuple[str, ...]) -> None:
    """Validate one site folder; lists every problem with file, row and reason.

    \b
    Example:
      omnifuse check-site data/demo/hospital_a
      omnifuse check-site data/demo/hospital_a --config demo --set split-seed=3
    """
    from omnifuse_core.data.validate import validate_site
    report = validate_site(site_dir, check_config(config, overrides))
    click.echo(report.format())
    if not report.ok:
        sys.exit(1)


@cli.command()
@click.option("--mode", type=click.Choice(["centralized", "local", "federated"]), required=True)
@click.option("--config", default="smoke", show_default=True, help="Config name (configs/) or YAML file.")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Federation folder or site folder.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run directory to write.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key (repeatable).")
@click.option("--no-report", is_flag=True, help="Skip report.html and model_card.md (write them later: omnifuse report).")
def train(mode: str, config: str, data: Path, out: Path, overrides: tuple[str, ...], no_report: bool) -> None:
    """Train the same model and config on pooled data, per site alone, or federated (Flower simulation);
    then write the run's report.html and model_card.md.

    \b
    Example:
      omnifuse train --mode federated --config smoke --data data/smoke --out runs/smoke-fl --set rounds=3
    """
    cfg = _config(config, overrides)
    run_dir = _run_mode(mode, cfg, data, out)
    click.echo(f"run directory: {run_dir} (metrics: {run_dir / 'metrics.json'})")
    if not no_report:
        from omnifuse_core.report import write_report
        report = Path(write_report(run_dir, sites=[data]))
        click.echo(f"report: {report.resolve()}")
        click.echo(f"model card: {(report.parent / 'model_card.md').resolve()}")


@cli.command()
@click.option("--mode", type=click.Choice(["centralized", "local", "federated"]), required=True)
@click.option("--config", default="smoke", show_default=True, help="Config name (configs/) or YAML file.")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Federation folder or site folder.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for the runs and cv.json.")
@click.option("--repeats", type=int, default=5, show_default=True, help="Random patient splits to train and test.")
@click.option("--first-split-seed", type=int, default=0, show_default=True)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key (repeatable).")
def cv(mode: str, config: str, data: Path, out: Path, repeats: int, first_split_seed: int,
       overrides: tuple[str, ...]) -> None:
    """Repeat training and test on several random patient splits (split-seed); mean and 95 % interval.

    \b
    Example:
      omnifuse cv --mode federated --config small-cohort --data data/cohort --out runs/cv --repeats 5
    """
    from sim.cv import run_cv
    result = run_cv(mode, _config(config, overrides), data, out, repeats=repeats, first=first_split_seed,
                    run=_run_mode)
    for key, s in result["summary"].items():
        click.echo(f"{result['metric']} ({key}): {s['mean']:.4f}  95 % interval over splits "
                   f"[{s['ci_low']:.4f}, {s['ci_high']:.4f}]")
    click.echo(f"runs and summary: {(Path(out) / 'cv.json').resolve()}")


def _run_mode(mode: str, cfg: Config, data: Path, out: Path) -> Path:
    from omnifuse_core.metrics import headline_metric

    from .progress import RoundProgress
    quiet = logging.getLogger().level >= logging.WARNING
    with RoundProgress(Path(out).resolve(), cfg.rounds, headline_metric(cfg.task), enabled=not quiet):
        if mode == "federated":
            from sim.federated import run_federated
            return Path(run_federated(cfg, data, out))
        from sim.modes import run_centralized, run_local
        return (run_centralized if mode == "centralized" else run_local)(cfg, data, out)


@cli.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True)
@click.option("--config", default=None, help="Config name or YAML file [default: demo, or demo-dp with --dp].")
@click.option("--dp", is_flag=True, help="Train with DP-SGD at every site on the DP profile (configs/demo-dp.yaml).")
@click.option("--sites", type=int, default=4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--mode", type=click.Choice(["federated", "centralized"]), default="federated", show_default=True)
def demo(out: Path, config: str | None, dp: bool, sites: int, seed: int, mode: str) -> None:
    """Synthetic hospitals + federated training + reports, with defaults.

    \b
    Example:
      omnifuse demo --out runs/demo
      omnifuse demo --dp --out runs/demo-dp    # DP-SGD at every site (epsilon 8, delta 1e-5)
    """
    from sim.generator import generate_federation
    cfg = _config(config or ("demo-dp" if dp else "demo"), ("dp=true",) if dp else ())
    data = out / "data"
    if not (data / "federation.yaml").is_file():
        generate_federation("demo", sites, data, seed=seed)
    run_dir = _run_mode(mode, cfg, data, out / "run")
    from omnifuse_core.report import write_report
    report = write_report(run_dir, sites=[data])
    click.echo(f"demo finished: run directory {run_dir.resolve()}")
    click.echo(f"metrics: {(run_dir / 'metrics.json').resolve()}")
    privacy = run_dir / "privacy"
    if privacy.is_dir():
        click.echo(f"privacy reports: {privacy.resolve()}")
    click.echo(f"report: {Path(report).resolve()}")


@cli.command("privacy-report")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["table", "json", "markdown"]), default="table", show_default=True)
def privacy_report(source: Path, fmt: str) -> None:
    """Print the privacy-budget report of a run directory or of one site's ledger file.

    \b
    Example:
      omnifuse privacy-report runs/demo/run
    """
    from omnifuse_core.privacy.report import format_report_source
    click.echo(format_report_source(source, fmt))


@cli.command()
@click.option("--model", "run_dir", type=click.Path(path_type=Path), required=True, help="Trained run directory.")
@click.option("--site", "site_dir", type=click.Path(path_type=Path), required=True, help="Site folder to predict.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="CSV file to write.")
@click.option("--site-model", default=None, help="Local runs: whose model to use (default: the site's own).")
def predict(run_dir: Path, site_dir: Path, out: Path, site_model: str | None) -> None:
    """Apply a trained run to a site: one CSV row per patient (probability or risk, per-modality
    present/imputed flags, each modality head's probability, prediction mode, run id and config digest).

    \b
    Example:
      omnifuse predict --model runs/demo/run --site data/demo/hospital_a --out preds.csv
    """
    from omnifuse_core.predict import predict_site
    path = predict_site(run_dir, site_dir, out, site=site_model)
    click.echo(f"predictions written to {path}")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--site", "sites", multiple=True, type=click.Path(path_type=Path),
              help="Site or federation folder for ROC/calibration/KM/maps (repeatable).")
@click.option("--groups", type=int, default=3, show_default=True, help="Risk groups (quantiles of predicted risk).")
@click.option("--clusters", type=int, default=3, show_default=True, help="k-means clusters of embeddings (0 = off).")
def report(run_dir: Path, sites: tuple[Path, ...], groups: int, clusters: int) -> None:
    """Write RUN/report.html (self-contained, plots embedded) and RUN/model_card.md for a finished run.

    \b
    Example:
      omnifuse report runs/demo/run --site runs/demo/data
    """
    from omnifuse_core.report import write_report
    path = write_report(run_dir, sites=list(sites) or None, n_groups=groups, clusters=clusters)
    click.echo(f"report: {path.resolve()}")
    click.echo(f"model card: {(path.parent / 'model_card.md').resolve()}")


@cli.command("import-mimic")
@click.option("--listfile", type=click.Path(path_type=Path), required=True, help="The benchmark's listfile.csv.")
@click.option("--stays", type=click.Path(path_type=Path), required=True, help="Folder of per-stay CSV files.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Site folder to create.")
@click.option("--site-name", default="mimic", show_default=True)
@click.option("--task", default="binary", show_default=True)
def import_mimic(listfile: Path, stays: Path, out: Path, site_name: str, task: str) -> None:
    """Import the MIMIC-III benchmark (listfile + per-stay CSVs) into a site folder.

    \b
    Example:
      omnifuse import-mimic --listfile in-hospital-mortality/train/listfile.csv \\
          --stays in-hospital-mortality/train --out sites/mimic
    """
    from omnifuse_core.data.mimic_import import import_mimic_benchmark
    path = import_mimic_benchmark(listfile, stays, out, site_name=site_name, task=task)
    click.echo(f"site folder written to {path}; check it with: omnifuse check-site {path}")


from .supernode import supernode  # noqa: E402 (registered below)

cli.add_command(supernode)


def main() -> None:
    """Console entry point: run the CLI, turning expected errors into one sentence."""
    debug = "--debug" in sys.argv
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError, PermissionError, RuntimeError,
            KeyError, OSError) as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()

"""Security of what is read from disk or the network: no pickle anywhere (checkpoints, received weights, image
backbones, .npy images), a pickle bomb in place of a checkpoint is refused without running, and no site file
reference can leave the site folder (``..``, absolute paths, symlinked files or folders, descriptor tables)."""
from __future__ import annotations

import ast
import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("omnifuse_core", "server", "client", "sim")


class Bomb:
    """Unpickling this runs ``Path(marker).write_text('pwned')``: proof that pickle code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def _calls(name_pred):
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            tree = ast.parse(f.read_text(), filename=str(f))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and name_pred(ast.unparse(node.func)):
                    yield f.relative_to(ROOT), node


def _kw(node: ast.Call, name: str):
    for kw in node.keywords:
        if kw.arg == name:
            return ast.literal_eval(kw.value) if isinstance(kw.value, ast.Constant) else "dynamic"
    return None


def test_no_code_path_unpickles():
    torch_loads = list(_calls(lambda f: f.endswith("torch.load")))
    assert all(_kw(n, "weights_only") is True for _, n in torch_loads), \
        [f"{f}:{n.lineno}" for f, n in torch_loads if _kw(n, "weights_only") is not True]
    np_loads = list(_calls(lambda f: f in ("np.load", "numpy.load")))
    assert np_loads and all(_kw(n, "allow_pickle") is False for _, n in np_loads), \
        [f"{f}:{n.lineno}" for f, n in np_loads if _kw(n, "allow_pickle") is not False]
    unsafe = list(_calls(lambda f: f in ("pickle.load", "pickle.loads", "cloudpickle.load", "joblib.load",
                                         "dill.load", "torch.serialization.load")))
    assert not unsafe, [f"{f}:{n.lineno}" for f, n in unsafe]
    # pd.read_pickle is pickle too
    assert not list(_calls(lambda f: f.endswith("read_pickle")))


def _bomb_file(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(Bomb(marker)))


def test_pickle_bomb_in_place_of_a_checkpoint_is_refused(tmp_path):
    from server.checkpoint import Checkpoint, load_latest, save_checkpoint

    ckpt_dir = tmp_path / "checkpoints"
    save_checkpoint(ckpt_dir, Checkpoint(round=1, weights={"w": np.ones(3, np.float32)}, state={"strategy": "x"}))
    marker = tmp_path / "pwned.txt"
    _bomb_file(ckpt_dir / "round-0001.safetensors", marker)
    with pytest.raises(Exception) as err:  # noqa: PT011 - refused; the clear message is checked below
        load_latest(ckpt_dir)
    assert not marker.exists() and not isinstance(err.value, AssertionError)


def test_corrupt_checkpoint_gives_the_clear_message(tmp_path):
    from omnifuse_core.predict import load_run_model
    from server.checkpoint import Checkpoint, load_latest, save_checkpoint

    run = tmp_path / "run"
    save_checkpoint(run / "checkpoints", Checkpoint(round=1, weights={"w": np.ones(3, np.float32)}, state={}))
    (run / "config.yaml").write_text("task: binary\n")
    _bomb_file(run / "checkpoints" / "round-0001.safetensors", tmp_path / "pwned.txt")
    with pytest.raises(ValueError, match="cannot resume"):
        load_latest(run / "checkpoints")
    with pytest.raises(ValueError, match="unreadable checkpoint"):
        load_run_model(run)


def test_pickle_bomb_as_run_model_is_refused(tmp_path):
    from omnifuse_core.predict import load_run_model
    from server.checkpoint import Checkpoint, save_checkpoint

    run = tmp_path / "run"
    save_checkpoint(run / "checkpoints", Checkpoint(round=1, weights={"w": np.ones(3, np.float32)}, state={}))
    (run / "config.yaml").write_text("task: binary\n")
    (run / "metrics.json").write_text(json.dumps({"mode": "federated"}))
    marker = tmp_path / "pwned.txt"
    _bomb_file(run / "checkpoints" / "round-0001.safetensors", marker)
    with pytest.raises(Exception) as err:  # noqa: PT011 - any refusal is fine, executing the payload is not
        load_run_model(run)
    assert not marker.exists() and not isinstance(err.value, AssertionError)


def test_pickle_bomb_as_image_backbone_is_refused(tmp_path):
    import torch

    from omnifuse_core.encoders import _load_backbone

    marker = tmp_path / "pwned.txt"
    bomb = tmp_path / "backbone.pt"
    _bomb_file(bomb, marker)
    with pytest.raises(pickle.UnpicklingError):
        _load_backbone(torch.nn.Linear(2, 2), bomb)
    assert not marker.exists()


def test_received_weights_with_pickled_objects_are_refused(tmp_path):
    """A reply whose Array holds an object (pickled) .npy payload cannot be turned into numpy on the server."""
    from flwr.app import Array

    marker = tmp_path / "pwned.txt"
    buf = io.BytesIO()
    np.save(buf, np.array([Bomb(marker)], dtype=object), allow_pickle=True)
    arr = Array(dtype="object", shape=(1,), stype="numpy.ndarray", data=buf.getvalue())
    with pytest.raises(ValueError, match="allow_pickle"):
        arr.numpy()
    assert not marker.exists()


def test_npy_image_with_pickled_objects_is_a_validation_problem(tmp_path):
    from omnifuse_core.data.images import ImageError, load_image

    marker = tmp_path / "pwned.txt"
    f = tmp_path / "img.npy"
    np.save(f, np.array([Bomb(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(ImageError):
        load_image(f, size=8, channels=1)
    assert not marker.exists()


# --- paths cannot escape the site folder (tests/test_data_validate.py covers '..' and absolute image paths) ------
def _rewrite(site: Path, column: str, row: int, value: str) -> None:
    lines = (site / "cohort.csv").read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[row].split(",")
    cells[header.index(column)] = value
    lines[row] = ",".join(cells)
    (site / "cohort.csv").write_text("\n".join(lines) + "\n")


def test_symlinks_and_descriptor_tables_cannot_escape(tmp_path):
    import yaml

    from fixtures.data.site_factory import make_site
    from omnifuse_core.config import Config
    from omnifuse_core.data.site import load_site
    from omnifuse_core.data.validate import validate_site

    site = make_site(tmp_path, 8)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("another hospital's report")
    (outside / "genomics.csv").write_text((site / "genomics.csv").read_text())
    (site / "text" / "link.txt").symlink_to(outside / "secret.txt")  # symlinked file
    (site / "linked_dir").symlink_to(outside, target_is_directory=True)  # symlinked folder
    _rewrite(site, "text", 1, "text/link.txt")
    _rewrite(site, "text", 2, "linked_dir/secret.txt")
    _rewrite(site, "text", 3, "text\\..\\..\\outside\\secret.txt")  # Windows-style '..'
    _rewrite(site, "text", 4, "C:\\outside\\secret.txt")
    desc = yaml.safe_load((site / "site.yaml").read_text())
    desc["modalities"]["genomics"]["table"] = "../outside/genomics.csv"
    (site / "site.yaml").write_text(yaml.safe_dump(desc))
    cfg = Config().replace(modalities="text,genomics")
    report = validate_site(site, cfg)
    escapes = {(p.file, p.row, p.field) for p in report.problems if p.code == "path_escapes_site"}
    assert {("cohort.csv", r, "text") for r in (1, 2, 3, 4)} <= escapes
    table = [p for p in report.problems if p.field == "modalities.genomics.table"]
    assert table and "escapes" in table[0].reason
    from fixtures.data.site_factory import GENES

    data = load_site(site, Config().replace(modalities="genomics", on_invalid="skip", genomics_genes=",".join(GENES)))
    assert data.skipped["genomics"]["missing_file"] >= 1
    assert not data.train.present.any()  # nothing read from the table outside the folder

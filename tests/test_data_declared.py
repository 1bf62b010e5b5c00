"""A configured modality that no site declares is an error naming every site's declared modalities (issue 15 c);
a declared modality the config does not list is a logged note; both centralized/local and the federation setup."""
import shutil

import pytest
import yaml
from click.testing import CliRunner

from grid_fakes import DirectGrid, task_identity  # noqa: F401 (autouse fixture: messages outside a runtime)
from omnifuse_cli.main import cli
from omnifuse_core.config import Config, ConfigError
from omnifuse_core.data.declared import check_declared


def test_undeclared_configured_modality_names_each_sites_list_and_the_fix():
    cfg = Config(modalities="ehr,image,text,genomics")
    with pytest.raises(ConfigError) as err:
        check_declared({"a": ["clinical", "genomics"], "b": ["clinical"]}, cfg)
    text = str(err.value)
    assert "ehr, image, text are declared by no site" in text
    assert "a: clinical, genomics; b: clinical" in text and "set modalities: genomics" in text


def test_declared_but_unconfigured_modality_is_a_note(caplog):
    notes = check_declared({"a": ["ehr", "clinical"], "b": ["ehr"]}, Config(modalities="ehr"))
    assert notes == ["site 'a' declares clinical, which the config's modalities (ehr) do not list: ignored"]
    assert "declares clinical" in caplog.text
    assert check_declared({"a": ["ehr"]}, Config(modalities="ehr")) == []


def test_train_refuses_before_loading_when_no_site_declares_a_modality(smoke_federation, tmp_path):
    fed = _drop_genomics(smoke_federation, tmp_path / "fed")
    result = CliRunner().invoke(cli, ["train", "--no-report", "--mode", "centralized", "--config", "smoke", "--data", str(fed),
                                      "--out", str(tmp_path / "r")])
    assert result.exit_code != 0
    text = result.output + str(result.exception)
    assert "genomics are declared by no site" in text and "set modalities: ehr,image,text" in text


def _drop_genomics(src, dst):
    shutil.copytree(src, dst)
    for site in yaml.safe_load((dst / "federation.yaml").read_text())["sites"]:
        path = dst / str(site) / "site.yaml"
        desc = yaml.safe_load(path.read_text())
        desc["modalities"].pop("genomics", None)
        path.write_text(yaml.safe_dump(desc))
    return dst


def test_federation_setup_refuses_when_no_site_declares_a_modality(smoke_federation, tmp_path):
    """Each site sends its declared names with its statistics (names only); the server refuses before describe."""
    from client.app import app as client_app
    from server.loop import run_federation
    from server.setup import FederationSetupError

    class Grid(DirectGrid):
        def send_and_receive(self, messages, *, timeout=None):
            return [client_app(m, self.nodes[m.metadata.dst_node_id]) for m in messages]

    fed = _drop_genomics(smoke_federation, tmp_path / "fed")
    cfg = Config.load("smoke").replace(data_root=str(fed), run_dir=str(tmp_path / "run"), min_sites=3)
    with pytest.raises(FederationSetupError, match="genomics are declared by no site .*hospital_a: ehr, image, text"):
        run_federation(Grid(3), cfg)

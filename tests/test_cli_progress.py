"""The round progress bar follows metrics.json: it counts validated rounds, shows the last value, and is off with -q."""
import json

from omnifuse_cli.progress import RoundProgress


def test_bar_counts_validated_rounds_and_shows_the_last_value(tmp_path, capsys):
    path = tmp_path / "metrics.json"
    with RoundProgress(tmp_path, 3, "auroc", interval=0.05) as progress:
        path.write_text(json.dumps({"rounds": [{"round": 1, "global": {"auroc": 0.61}},
                                               {"round": 2, "global": {}}]}))  # round 2 not yet validated
        progress._update()
        assert progress._bar.n == 1
        path.write_text(json.dumps({"rounds": [{"round": 1, "global": {"auroc": 0.61}},
                                               {"round": 2, "global": {"auroc": 0.66}}]}))
    err = capsys.readouterr().err
    assert "2/3" in err and "val auroc=0.6600" in err


def test_quiet_means_no_bar(tmp_path, capsys):
    with RoundProgress(tmp_path, 3, "auroc", enabled=False):
        pass
    assert capsys.readouterr().err == ""

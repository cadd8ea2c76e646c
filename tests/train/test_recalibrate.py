"""`signals adapters calibrate`: a newer labelled window, a new registry version."""

import filecmp
import json
from datetime import date

from signals.cli import main
from train.registry import AdapterRegistry


def test_calibrate_command_publishes_a_new_version(trained_adapter, registry_dir,
                                                   reuters_dataset, capsys):
    before = (trained_adapter.path / "manifest.json").read_text()
    registry = AdapterRegistry(registry_dir)
    names_before = {v.name for v in registry.list()}
    code = main(["adapters", "calibrate", trained_adapter.name, "--split", "1987-04",
                 "--from", "1987-04-01", "--to", "1987-04-08", "--limit", "32",
                 "--dataset", str(reuters_dataset), "--registry", str(registry_dir)])
    assert code == 0
    (new_name,) = {v.name for v in registry.list()} - names_before
    assert new_name in capsys.readouterr().out
    new = registry.get(new_name)
    assert new.manifest.recalibrated_from == trained_adapter.name
    window = new.calibration.fitted_on
    assert (window.split, window.n) == ("1987-04", 32)
    assert (window.date_from, window.date_to) == (date(1987, 4, 1), date(1987, 4, 8))
    assert new.calibration != trained_adapter.calibration
    # same weights, old version untouched, everything else of the manifest kept
    for file in ("adapter_config.json", "adapter_model.safetensors"):
        assert filecmp.cmp(trained_adapter.path / file, new.path / file, shallow=False)
    assert (trained_adapter.path / "manifest.json").read_text() == before
    stored = json.loads((new.path / "manifest.json").read_text())
    assert stored["dataset"] == json.loads(before)["dataset"]
    assert new.manifest.dataset == trained_adapter.manifest.dataset


def test_calibrate_command_rejects_an_empty_window(trained_adapter, registry_dir,
                                                   reuters_dataset, capsys):
    code = main(["adapters", "calibrate", trained_adapter.name, "--split", "1987-04",
                 "--from", "1987-05-01", "--dataset", str(reuters_dataset),
                 "--registry", str(registry_dir)])
    assert code == 2
    assert "no labelled articles" in capsys.readouterr().err

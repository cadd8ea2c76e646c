"""`signals adapters calibrate`: a newer labelled window, a new registry version."""

import filecmp
import json
from datetime import date

import pytest

from signals.cli import main
from classify.registry import AdapterRegistry


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


def test_calibrate_command_rejects_a_vllm_that_is_down(trained_adapter, registry_dir,
                                                       reuters_dataset, capsys):
    """`--vllm-url` at a port nobody listens on: one clear line, exit 2, no new version."""
    import socket

    with socket.socket() as probe:  # a free port, closed again: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    registry = AdapterRegistry(registry_dir)
    names_before = {v.name for v in registry.list()}
    code = main(["adapters", "calibrate", trained_adapter.name, "--split", "1987-04",
                 "--limit", "4", "--dataset", str(reuters_dataset),
                 "--registry", str(registry_dir), "--vllm-url", f"http://127.0.0.1:{port}"])
    assert code == 2
    assert f"vLLM at http://127.0.0.1:{port} is unreachable" in capsys.readouterr().err
    assert {v.name for v in registry.list()} == names_before


@pytest.mark.vllm
def test_calibrate_through_vllm_fits_what_in_process_fits(trained_adapter, registry_dir,
                                                          reuters_dataset, vllm_server, capsys,
                                                          monkeypatch):
    """The same window scored by a real vLLM server (the fast path for whole windows)
    gives the calibration the in-process backend gives, and the server is left as it was."""
    import httpx

    from classify.validation import load_window, recalibrate

    registry = AdapterRegistry(registry_dir)
    window = load_window(reuters_dataset, "1987-04", date(1987, 4, 1), date(1987, 4, 8), 32)
    in_process = recalibrate(registry, trained_adapter.name, window).calibration
    served_before = {m["id"] for m in httpx.get(f"{vllm_server.url}/v1/models").json()["data"]}
    names_before = {v.name for v in registry.list()}

    def no_model_here(*args, **kwargs):
        raise AssertionError("--vllm-url must not load the model in this process")

    monkeypatch.setattr("classify.backends.InProcessBackend.__init__", no_model_here)
    code = main(["adapters", "calibrate", trained_adapter.name, "--split", "1987-04",
                 "--from", "1987-04-01", "--to", "1987-04-08", "--limit", "32",
                 "--dataset", str(reuters_dataset), "--registry", str(registry_dir),
                 "--vllm-url", vllm_server.url, "--vllm-dtype", "float32"])
    assert code == 0, capsys.readouterr().err
    (new_name,) = {v.name for v in registry.list()} - names_before
    through_vllm = registry.get(new_name).calibration
    assert through_vllm.fitted_on == in_process.fitted_on
    assert through_vllm.method == in_process.method
    # each records the dtype its raw P came in: in process float32, there what
    # --vllm-dtype said of the server (the fixture starts it in float32)
    assert in_process.dtype == through_vllm.dtype == "float32"
    # The two backends' raw P agree within 1e-2 (tests/serve/test_vllm.py), not to the
    # last bit, so the line fitted to them agrees as closely, not exactly.
    assert through_vllm.slope == pytest.approx(in_process.slope, rel=0.05, abs=0.05)
    assert through_vllm.intercept == pytest.approx(in_process.intercept, rel=0.05, abs=0.05)
    for p_raw in (0.05, 0.2, 0.5, 0.8, 0.95):
        assert through_vllm.apply(p_raw) == pytest.approx(in_process.apply(p_raw), abs=0.02)
    # the adapter was hot-loaded there under a name of its own and unloaded after
    served_after = {m["id"] for m in httpx.get(f"{vllm_server.url}/v1/models").json()["data"]}
    assert served_after == served_before



def test_a_window_that_fails_midway_still_unloads_and_keeps_its_error(
        trained_adapter, base_model_dir, reuters_dataset, monkeypatch, caplog):
    """A backend failing mid-window: the one-off adapter is still unloaded (a shared vLLM
    server should not keep it), and an unload that fails too is logged, not raised over
    the first error."""
    from pipeline.dataset import load_split
    from classify.backends import BackendUnavailable, InProcessBackend
    from classify.validation import raw_p_signal

    unloads = []

    async def fail_midway(self, prompts, adapters):
        raise BackendUnavailable("the server went away mid-window")

    async def unload_fails_too(self, name):
        unloads.append(name)
        raise BackendUnavailable("cannot unload either")

    monkeypatch.setattr(InProcessBackend, "signal_probabilities", fail_midway)
    monkeypatch.setattr(InProcessBackend, "unload_adapter", unload_fails_too)
    articles = load_split(reuters_dataset, "1987-04")[:4]
    with pytest.raises(BackendUnavailable, match="went away mid-window"):
        raw_p_signal(base_model_dir, trained_adapter.path, articles, 128)
    assert unloads == ["calibrating"]
    assert "could not unload calibrating" in caplog.text

import json
import multiprocessing

import pytest

from classify.registry import (AdapterManifest, AdapterNotFound, AdapterRegistry,
                            InvalidAdapterName)


def _stage(registry, name):
    staging = registry.staging_dir(name)
    (staging / "adapter_config.json").write_text("{}")
    (staging / "adapter_model.safetensors").write_bytes(b"")
    return staging


def test_staged_versions_are_invisible_until_published(tmp_path):
    registry = AdapterRegistry(tmp_path)
    name = registry.new_name("lora", "reuters-acq-train")
    _stage(registry, name)
    assert registry.list() == []
    with pytest.raises(AdapterNotFound):
        registry.get(name)
    version = registry.publish(name, AdapterManifest(method="lora",
                                                     created_at="2026-01-01T00:00:00"))
    assert [v.name for v in registry.list()] == [name]
    assert json.loads((version.path / "manifest.json").read_text())["name"] == name
    assert not (tmp_path / f".staging-{name}").exists()


def test_names_are_unique_and_never_reused(tmp_path):
    registry = AdapterRegistry(tmp_path)
    names = {registry.new_name("lora", "x") for _ in range(50)}
    assert len(names) == 50
    name = names.pop()
    _stage(registry, name)
    registry.publish(name, AdapterManifest())
    _stage(registry, name)
    with pytest.raises(FileExistsError):
        registry.publish(name, AdapterManifest())


def test_publish_refuses_incomplete_adapter(tmp_path):
    registry = AdapterRegistry(tmp_path)
    registry.staging_dir("lora-x")
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        registry.publish("lora-x", AdapterManifest())


@pytest.mark.parametrize("name", ["../etc", "a/b", "..", ".hidden", "", "x" * 200, "a\\b", "a b"])
def test_path_traversal_and_odd_names_are_refused(tmp_path, name):
    with pytest.raises(InvalidAdapterName):
        AdapterRegistry(tmp_path).get(name)


def _point_aliases(root, aliases, name, rounds):
    registry = AdapterRegistry(root)
    for _ in range(rounds):
        for alias in aliases:
            registry.set_alias(alias, name)


def test_concurrent_alias_writers_never_lose_each_others_change(tmp_path):
    """Six processes, each pointing its own aliases at a version again and again: every
    alias is there at the end (read-modify-write without the lock loses some)."""
    registry = AdapterRegistry(tmp_path)
    name = registry.new_name("lora", "reuters-acq-train")
    _stage(registry, name)
    registry.publish(name, AdapterManifest(method="lora", created_at="2026-01-01T00:00:00"))
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_point_aliases,
                               args=(tmp_path, [f"w{i}-{k}" for k in range(4)], name, 15))
               for i in range(6)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(120)
        assert writer.exitcode == 0
    assert registry.aliases() == {f"w{i}-{k}": name for i in range(6) for k in range(4)}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".aliases.json.")]


def test_one_prompt_cap_rule_for_serving_and_calibration(tmp_path, tokenizer):
    """The API served a version that records no training cap at its own cap (512)
    while calibration raised for it; both now ask ``AdapterVersion.prompt_cap``."""
    from classify.classifier import SignalClassifier
    from classify.manifest import Hyperparameters

    registry = AdapterRegistry(tmp_path)
    versions = {}
    for tag, cap in (("uncapped", None), ("short", 192)):
        name = registry.new_name("lora", tag)
        _stage(registry, name)
        versions[tag] = registry.publish(name, AdapterManifest(
            hyperparameters=Hyperparameters(max_prompt_tokens=cap)))
    served = SignalClassifier(None, tokenizer, registry, max_prompt_tokens=512, threshold=0.5)
    assert versions["uncapped"].prompt_cap() == served.prompt_limit(versions["uncapped"]) == 512
    assert versions["short"].prompt_cap() == served.prompt_limit(versions["short"]) == 192
    tight = SignalClassifier(None, tokenizer, registry, max_prompt_tokens=128, threshold=0.5)
    assert tight.prompt_limit(versions["short"]) == versions["short"].prompt_cap(128) == 128
    assert tight.prompt_limit(None) == 128  # the base model: the server's cap

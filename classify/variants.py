"""Scaled copies of a published adapter: real, loadable registry versions that answer
differently, made in milliseconds instead of another training run (load tests,
benchmarks, hot-loading checks)."""

from __future__ import annotations

import shutil
from pathlib import Path

from classify.registry import AdapterRegistry, AdapterVersion


def publish_variant(registry_dir: Path, source: AdapterVersion, tag: str,
                    scale: float = 1.0) -> AdapterVersion:
    """Publish a new registry version whose LoRA B matrices are ``scale`` x the source's."""
    from safetensors.torch import load_file, save_file

    registry = AdapterRegistry(registry_dir)
    name = registry.new_name("lora", tag)
    staging = registry.staging_dir(name)
    shutil.copy(source.path / "adapter_config.json", staging)
    weights = load_file(source.path / "adapter_model.safetensors")
    save_file({k: v * scale if "lora_B" in k else v for k, v in weights.items()},
              staging / "adapter_model.safetensors")
    return registry.publish(name, source.manifest.model_copy(
        update={"variant_of": source.name, "scale": scale}))

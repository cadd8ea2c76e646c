"""Where the product keeps its files, configurable by environment (``SIGNALS_*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
               "TOKENIZERS_PARALLELISM": "false"}
"""No model or dataset hub is reachable (STACK.md): what every process that loads a
model runs with. The ``signals`` command sets these (unless already set) before anything
imports transformers, and a local Ray's workers inherit them from it; the vLLM child
gets them in its environment (``serve/vllm_server.py``), the images and so a Ray
cluster's workers in their ``ENV`` (``Dockerfile.train``, ``Dockerfile.serve``). No
library module sets them on import."""


class Paths(BaseSettings):
    """Locations of the product's data; every field reads ``SIGNALS_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="SIGNALS_")

    data_dir: Path = Field(
        default=Path("data"),
        description="Root of everything the product writes: models/, datasets/, registry/.",
    )
    reuters_dir: Path = Field(
        default=Path("../shared/data/reuters21578"),
        description="The Reuters-21578 collection (reut2-*.sgm). Also downloadable from "
        "the UCI KDD archive; never copied into the product.",
    )

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def registry_dir(self) -> Path:
        return self.data_dir / "registry"

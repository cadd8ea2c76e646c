"""The adapter registry: one directory per adapter version, with its manifest.

Layout::

    <registry>/<name>/adapter_config.json
                      adapter_model.safetensors
                      manifest.json        # an AdapterManifest (classify/manifest.py)
    <registry>/aliases.json                # {"production": "<name>", "candidate": "<name>"}

A version is assembled in ``<registry>/.staging-<name>/`` and renamed into place only
when complete (``manifest.json`` written last), so a reader — the serving side's
watcher included — never sees half an adapter; its files are fsynced before the rename
and the rename after it, so a crash never publishes empty files. Alias changes are
read, changed and written back under an exclusive ``flock`` (``.aliases.lock``), so two
writers on a shared volume never lose each other's change. Names are unique (method,
data, UTC time, random suffix) and never reused: vLLM caches adapters by name.

Paths in a manifest are written relative to the registry root where they lie in the
data directory and resolved against it on read (:mod:`classify.manifest`), so a copied
data directory keeps working.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pipeline.prompt import DEFAULT_MAX_PROMPT_TOKENS, PromptStyle
from classify.calibration import Calibration
from classify.manifest import (AdapterManifest, InvalidManifest, relative_to_registry,
                            resolve_in_registry)

__all__ = ["AdapterManifest", "AdapterNotFound", "AdapterRegistry", "AdapterVersion",
           "InvalidAdapterName", "InvalidManifest", "validate_name"]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
ALIASES = "aliases.json"
ALIASES_LOCK = ".aliases.lock"
"""Held (``flock``, exclusive) while an alias is read, changed and written back: two
writers (two replicas on a shared volume, a promotion beside a person) never lose
each other's change."""
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ALIAS_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


class AdapterNotFound(KeyError):
    """No complete adapter version of that name in the registry."""

    def __str__(self) -> str:  # KeyError would print the repr of its argument
        return str(self.args[0])


class InvalidAdapterName(ValueError):
    """A name that could escape the registry directory or is otherwise malformed."""


@dataclass(frozen=True)
class AdapterVersion:
    name: str
    path: Path
    """The version's directory (``<registry>/<name>``)."""
    manifest: AdapterManifest
    """Its manifest, paths resolved (absolute)."""

    @property
    def calibration(self) -> Calibration | None:
        """The version's calibration and threshold; None for versions made without one
        (older ones, or trained without a validation window): they serve uncalibrated."""
        return self.manifest.calibration

    @property
    def max_prompt_tokens(self) -> int | None:
        """The prompt cap it was trained with; None when the manifest records none."""
        return self.manifest.hyperparameters.max_prompt_tokens

    def prompt_cap(self, server_cap: int = DEFAULT_MAX_PROMPT_TOKENS) -> int:
        """The prompt cap the version is served and calibrated with: the one it was
        trained with, within ``server_cap`` (the server's, by default the API's own
        default); a version that records none gets ``server_cap``. Rendering an article
        exactly as in training keeps train and serve prompts identical, and the one rule
        for the API and calibration keeps a calibration fitted on the prompts served."""
        trained = self.max_prompt_tokens
        return min(trained, server_cap) if trained else server_cap

    @property
    def prompt_style(self) -> PromptStyle:
        """The instruction it was trained with (``full`` for versions that record none)."""
        return self.manifest.hyperparameters.prompt_style or "full"


def _sort_time(created_at: datetime | None) -> datetime:
    """``created_at`` comparable across versions: none first, naive ones taken as UTC."""
    if created_at is None:
        return datetime.min.replace(tzinfo=timezone.utc)
    return created_at if created_at.tzinfo else created_at.replace(tzinfo=timezone.utc)


def validate_name(name: str) -> str:
    """Return ``name`` if it is a safe, plain directory name; raise otherwise."""
    if not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise InvalidAdapterName(
            f"invalid adapter name {name!r}: use letters, digits, '.', '_' and '-' "
            "(no path separators, no '..', at most 128 characters)")
    return name


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (the directory entry itself)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class AdapterRegistry:
    """A local directory of adapter versions (object storage in production)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def new_name(self, method: str, data_tag: str) -> str:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        return validate_name(f"{method}-{data_tag}-{stamp}-{secrets.token_hex(2)}")

    def staging_dir(self, name: str) -> Path:
        """Where a version is assembled before :meth:`publish` makes it visible."""
        path = self.root / f".staging-{validate_name(name)}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def publish(self, name: str, manifest: AdapterManifest) -> AdapterVersion:
        """Write the manifest (named ``name``, paths relative to the registry root where
        they lie in the data directory) into the staging directory and rename it into
        place. The version returned holds the paths absolute, as :meth:`get` does."""
        staging = self.root / f".staging-{validate_name(name)}"
        missing = [f for f in ADAPTER_FILES if not (staging / f).is_file()]
        if missing:
            raise FileNotFoundError(f"cannot publish {name}: {staging} lacks {missing}")
        final = self.root / name
        if final.exists():
            raise FileExistsError(f"adapter version {name} already exists; names are never reused")
        # Paths given relative are the caller's, i.e. relative to the working directory.
        manifest = manifest.model_copy(update={"name": name}).with_paths(Path.resolve)
        stored = manifest.with_paths(lambda p: relative_to_registry(p, self.root))
        (staging / MANIFEST).write_text(json.dumps(stored.to_json(), indent=2) + "\n")
        # On disk before the rename makes the version visible: a crash after it never
        # leaves a version whose files are empty or half-written.
        for file in staging.rglob("*"):
            if file.is_file():
                _fsync_file(file)
        _fsync_dir(staging)
        staging.rename(final)
        _fsync_dir(self.root)
        return AdapterVersion(name=name, path=final, manifest=manifest)

    def get(self, name: str) -> AdapterVersion:
        """The version ``name``, its manifest validated and its paths resolved against
        this registry's root; :class:`InvalidManifest` when the manifest is malformed."""
        path = self.root / validate_name(name)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise AdapterNotFound(f"no adapter named {name!r} in the registry {self.root}")
        try:
            raw = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as error:
            raise InvalidManifest(f"adapter {name}: {manifest_path} is not JSON: {error}") from None
        manifest = AdapterManifest.parse(raw, name)
        return AdapterVersion(name=name, path=path, manifest=manifest.with_paths(
            lambda p: resolve_in_registry(p, self.root)))

    def list(self) -> list[AdapterVersion]:
        """Complete versions, oldest first (staging directories are invisible). A version
        whose manifest is malformed is left out with a warning naming it, so one bad file
        does not hide the rest; :meth:`get` on it raises the error."""
        if not self.root.is_dir():
            return []
        versions = []
        for path in self.root.iterdir():
            if path.name.startswith(".") or not (path / MANIFEST).is_file():
                continue
            try:
                versions.append(self.get(path.name))
            except InvalidManifest as error:
                log.warning("registry %s: version left out: %s", self.root, error)
        return sorted(versions, key=lambda v: (_sort_time(v.manifest.created_at), v.name))

    # --- aliases ("production", "candidate", ...) ---------------------------------

    def aliases(self) -> dict[str, str]:
        """Alias -> adapter version name (empty when none was ever set)."""
        path = self.root / ALIASES
        return json.loads(path.read_text()) if path.is_file() else {}

    def set_alias(self, alias: str, name: str) -> None:
        """Point ``alias`` at an existing version: under :data:`ALIASES_LOCK`, written
        aside, fsynced and renamed over the file (atomic and durable)."""
        if not ALIAS_PATTERN.fullmatch(alias):
            raise InvalidAdapterName(
                f"invalid alias {alias!r}: lower-case letters, digits, '_' and '-', "
                "starting with a letter")
        self.get(name)  # raises AdapterNotFound for a version that does not exist
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ALIASES_LOCK, "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file closes
            aliases = {**self.aliases(), alias: name}
            staging = self.root / f".{ALIASES}.{secrets.token_hex(4)}"
            with open(staging, "w") as handle:
                handle.write(json.dumps(aliases, indent=2, sort_keys=True) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(staging, self.root / ALIASES)
            _fsync_dir(self.root)

    def resolve(self, name_or_alias: str) -> AdapterVersion:
        """The version an alias points at, or the version of that name."""
        target = self.aliases().get(name_or_alias)
        return self.get(target if target is not None else name_or_alias)

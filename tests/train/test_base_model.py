"""The base model is prepared once however many processes ask at the same time (the
demo and the tests, two test workers): they take turns on a lock beside the directory."""

import fcntl
import threading

from train.base_model import prepare_base_model


def test_a_second_preparer_waits_for_the_first_and_finds_it_prepared(base_model_dir):
    prepared = (base_model_dir / "model.safetensors").stat().st_mtime_ns
    results = []
    with open(base_model_dir.with_name(f".{base_model_dir.name}.lock"), "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # another process is preparing it
        waiter = threading.Thread(target=lambda: results.append(
            prepare_base_model(base_model_dir)), daemon=True)
        waiter.start()
        waiter.join(1.0)
        assert waiter.is_alive() and not results  # it waits for the lock
    waiter.join(60)
    assert len(results) == 1 and results[0].path == base_model_dir
    # it verified the finished directory and did not write it again
    assert (base_model_dir / "model.safetensors").stat().st_mtime_ns == prepared

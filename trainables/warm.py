"""Run by every Ray worker process as it starts (the sweep's `worker_process_setup_hook`): Tune's
trial actors take over started workers, and importing torch, torchvision and scikit-learn for the
trainable costs a fresh worker about 8 s on a 2-core machine; done at start, it overlaps the
driver's own set-up instead of delaying the first trials (BENCHMARKS.md)."""
from __future__ import annotations


def import_trainables() -> None:
    import trainables.tune_adapter  # noqa: F401

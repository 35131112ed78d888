"""The speed benchmark: the project's SFT step, DPO step and generation on synthetic batches of exact shapes."""

from cme_vlm.bench.run import run_bench

__all__ = ["run_bench"]

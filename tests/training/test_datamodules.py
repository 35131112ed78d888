"""Training data loaders: workers and pinned memory on CUDA by default, the same batches in the same order either way."""

from __future__ import annotations

import torch

from cme_vlm.models.encoding import ChatEncoder
from cme_vlm.schema import SFTConfig, Switch
from cme_vlm.training.datamodules import SFTDataModule, loader_options


def test_auto_collates_in_workers_and_pins_on_cuda_only():
    auto = SFTConfig()
    on_gpu, on_cpu = loader_options(auto, torch.device("cuda")), loader_options(auto, torch.device("cpu"))
    assert on_gpu["num_workers"] > 0 and on_gpu["pin_memory"] and on_gpu["persistent_workers"]
    assert on_cpu == {"num_workers": 0, "pin_memory": False, "persistent_workers": False}  # the demo stays as it was
    chosen = SFTConfig(num_workers=2, pin_memory=Switch.never)
    assert loader_options(chosen, torch.device("cuda")) == {"num_workers": 2, "pin_memory": False,
                                                            "persistent_workers": True}


def test_workers_give_the_batches_of_the_main_process_and_resume_alike(tiny_loaded, answered_records):
    """The sampler still decides the order, and each item its augmentation: with two workers a resumed epoch
    skips the same batches and sees the same pixels."""
    records = answered_records(n_test=0)

    def batches(workers: int, resume_batches: int) -> list[list[str]]:
        module = SFTDataModule(records, ChatEncoder(tiny_loaded, 512), SFTConfig(batch_size=1, num_workers=workers))
        module.load_state_dict({"epoch": 0, "batches": resume_batches})
        module.setup()
        return [(batch["ids"], batch["pixel_values"]) for batch in module.train_dataloader()]

    for resume in (0, 1):
        main, workers = batches(0, resume), batches(2, resume)
        assert [ids for ids, _ in workers] == [ids for ids, _ in main] and len(main) == 2 - resume
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(workers, main))

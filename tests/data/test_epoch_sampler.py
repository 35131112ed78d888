"""``EpochSampler`` and ``ResumableDataModule``: the order a resumed run shares with an uninterrupted one."""

from __future__ import annotations

from types import SimpleNamespace

from cme_vlm.data.sampling import EpochSampler, ResumableDataModule


def _epoch(sampler: EpochSampler, epoch: int) -> list:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_each_epoch_is_a_permutation_drawn_from_seed_and_epoch_only():
    data = range(10)
    first, again = EpochSampler(data, seed=3, batch_size=2), EpochSampler(data, seed=3, batch_size=2)
    orders = [_epoch(first, e) for e in range(3)]
    assert orders == [_epoch(again, e) for e in (0, 1, 2)]  # a fresh process draws the same epochs
    assert all(sorted(o) == list(range(10)) for o in orders) and orders[0] != orders[1]
    assert _epoch(EpochSampler(data, seed=4, batch_size=2), 0) != orders[0]


def test_ranks_take_disjoint_shards_of_the_same_permutation():
    data = range(12)
    shards = [_epoch(EpochSampler(data, 0, 2, num_replicas=2, rank=r), 1) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(12))
    assert shards[0] == _epoch(EpochSampler(data, 0, 2), 1)[0::2]


def test_resume_skips_the_consumed_batches_of_that_epoch_only():
    data = range(10)
    full = EpochSampler(data, 0, batch_size=3)
    resumed = EpochSampler(data, 0, batch_size=3)
    resumed.resume_at(epoch=1, batches=2)
    assert _epoch(resumed, 1) == _epoch(full, 1)[6:] and len(resumed) == 10  # Lightning counts the full epoch
    assert _epoch(resumed, 2) == _epoch(full, 2)


def test_epoch_keys_for_epoch_dependent_items():
    sampler = EpochSampler(range(4), 0, 1, with_epoch=True)
    assert {e for e, _ in _epoch(sampler, 5)} == {5}


def test_data_module_checkpoints_its_position_and_positions_the_sampler():
    saving = ResumableDataModule()
    progress = SimpleNamespace(current=SimpleNamespace(processed=2))
    saving.trainer = SimpleNamespace(current_epoch=1, world_size=1, global_rank=0,
                                     fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)))
    state = saving.state_dict()
    assert state == {"epoch": 1, "batches": 2}
    restored = ResumableDataModule()
    restored.load_state_dict(state)
    sampler = restored.train_sampler(range(10), seed=0, batch_size=3)
    assert _epoch(sampler, 1) == _epoch(EpochSampler(range(10), 0, 3), 1)[6:]
    assert ResumableDataModule().state_dict() == {}  # no trainer: nothing to save

"""A training data stream that a checkpoint can stop and restart exactly.

Each process's batches are a pure function of (seed, rank, world size, batch size, batch number):
an infinite stream of seeded permutations of the dataset, split across processes by position,
grouped into batches of one aspect (landscape / portrait) like detectron2's aspect-ratio grouping,
and each sample augmented with random generators seeded from its position in the stream. So the
state to save is the seed and the number of batches consumed, and a resumed run gets the batches
the interrupted one would have got, whatever the number of loader workers."""
import logging
import random

import numpy as np
import torch
from detectron2.data.build import trivial_batch_collator, worker_init_reset_seed
from detectron2.data.common import DatasetFromList

from ..errors import CityscapesDataError

logger = logging.getLogger(__name__)


def derived_seed(*entropy) -> int:
    """A 32-bit seed mixed from integers (numpy SeedSequence), for per-sample and per-step seeds."""
    return int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(1)[0])


class ResumableBatchSampler:
    """Lists of (stream position, dataset index) for one process, starting at batch start_batch."""

    def __init__(self, aspect_groups, batch_size: int, seed: int, rank: int, world_size: int,
                 start_batch: int = 0, repeat_factors=None):
        """aspect_groups: one hashable per dataset index (e.g. width > height); all equal turns
        grouping off. repeat_factors: None (each image once per pass), or how many times each image
        is seen per pass on average, as detectron2's RepeatFactorTrainingSampler takes them."""
        self.aspect_groups = list(aspect_groups)
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size, self.start_batch = rank, world_size, start_batch
        self.repeat_factors = None if repeat_factors is None else torch.as_tensor(repeat_factors, dtype=torch.float32)
        if self.repeat_factors is not None and len(self.repeat_factors) != len(self.aspect_groups):
            raise ValueError(f"{len(self.repeat_factors)} repeat factors for {len(self.aspect_groups)} images")

    def _pass_indices(self, generator):
        """One pass over the dataset, shuffled. With repeat factors, an image with factor 2.3 comes
        twice, or three times with probability 0.3 (stochastic rounding, drawn from the stream's
        own generator, so a resumed run draws the same)."""
        if self.repeat_factors is None:
            return torch.randperm(len(self.aspect_groups), generator=generator).tolist()
        whole = torch.floor(self.repeat_factors)
        extra = torch.rand(len(whole), generator=generator) < (self.repeat_factors - whole)
        copies = (whole + extra.to(whole.dtype)).to(torch.int64)
        indices = torch.repeat_interleave(torch.arange(len(copies)), copies)
        return indices[torch.randperm(len(indices), generator=generator)].tolist()

    def __iter__(self):
        generator = torch.Generator()
        generator.manual_seed(self.seed)
        buckets = {}
        position = 0
        batch_number = 0
        while True:
            for index in self._pass_indices(generator):
                mine = position % self.world_size == self.rank
                position += 1
                if not mine:
                    continue
                bucket = buckets.setdefault(self.aspect_groups[index], [])
                bucket.append((position - 1, index))
                if len(bucket) == self.batch_size:
                    if batch_number >= self.start_batch:
                        yield list(bucket)
                    batch_number += 1
                    bucket.clear()


# Keys of a mapped sample that report on the loading itself, read and removed in the main process
# (a data-loader worker cannot log to the run's log, and its exceptions arrive with its traceback).
BAD_SAMPLE_ERROR = "_cityscapes_ft_bad_sample_error"
SKIPPED_SAMPLES = "_cityscapes_ft_skipped_samples"


class PositionSeededMapDataset(torch.utils.data.Dataset):
    """Maps dataset_dicts[index] with numpy, python and torch random generators seeded from
    (seed, stream position), restoring the caller's generators afterwards.

    A sample found bad while mapping (an unreadable image) is reported, not raised: with
    skip_bad_samples the next sample of the dataset takes its place (the same one in every run,
    so a resumed run still gets the batches of an uninterrupted one)."""

    def __init__(self, dataset_dicts, mapper, seed: int, skip_bad_samples: bool = False):
        self._dicts = DatasetFromList(dataset_dicts, copy=False)
        self._mapper = mapper
        self._seed = seed
        self._skip = skip_bad_samples

    def __len__(self):
        return len(self._dicts)

    def __getitem__(self, item):
        position, index = item
        skipped = []
        for offset in range(len(self._dicts)):
            try:
                data = self._map(position, (index + offset) % len(self._dicts))
            except CityscapesDataError as e:
                if not self._skip:
                    return {BAD_SAMPLE_ERROR: str(e)}
                skipped.append(str(e))
                continue
            if skipped:
                data[SKIPPED_SAMPLES] = skipped
            return data
        return {BAD_SAMPLE_ERROR: "no training sample could be read: " + "; ".join(skipped[:3])}

    def _map(self, position, index):
        seed = derived_seed(self._seed, position)
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            np.random.seed(seed)
            random.seed(seed)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                data = self._mapper(self._dicts[index])
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
        if data is None:
            raise ValueError(
                f"The training mapper returned None for {self._dicts[index].get('file_name', index)}; "
                "the resumable loader needs a mapper that returns every sample (filter the dataset "
                "dicts instead)"
            )
        return data


class ResumableTrainLoader:
    """An iterable over batches (lists of mapped dicts) for this process, with state_dict() /
    load_state_dict() holding the seed and the number of batches handed out. Iterating starts a
    torch DataLoader at that batch; the iterator starts no worker before its first batch."""

    def __init__(self, dataset_dicts, mapper, *, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, aspect_ratio_grouping: bool = True, num_workers: int = 0,
                 skip_bad_samples: bool = False, repeat_factors=None):
        self.dataset_dicts = dataset_dicts
        self.repeat_factors = repeat_factors
        self.mapper = mapper
        self.batch_size, self.seed = batch_size, int(seed)
        self.rank, self.world_size = rank, world_size
        self.num_workers = num_workers
        self.skip_bad_samples = skip_bad_samples
        self.aspect_groups = [
            d["width"] > d["height"] if aspect_ratio_grouping else True for d in dataset_dicts
        ]
        self.batches_consumed = 0

    def __iter__(self):
        sampler = ResumableBatchSampler(
            self.aspect_groups, self.batch_size, self.seed, self.rank, self.world_size,
            start_batch=self.batches_consumed, repeat_factors=self.repeat_factors,
        )
        loader = torch.utils.data.DataLoader(
            PositionSeededMapDataset(self.dataset_dicts, self.mapper, self.seed, self.skip_bad_samples),
            batch_sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=trivial_batch_collator,
            worker_init_fn=worker_init_reset_seed,
            # Its own generator: making an iterator then draws nothing from the global RNG.
            generator=torch.Generator().manual_seed(self.seed),
        )
        for batch in loader:
            for sample in batch:
                if BAD_SAMPLE_ERROR in sample:
                    raise CityscapesDataError(
                        sample[BAD_SAMPLE_ERROR] + " (CITYSCAPES_FT.ON_BAD_SAMPLE skip trains without it)"
                    )
                for problem in sample.pop(SKIPPED_SAMPLES, []):
                    logger.warning(f"Skipped a training sample (CITYSCAPES_FT.ON_BAD_SAMPLE skip): {problem}")
            self.batches_consumed += 1
            yield batch

    def state_dict(self):
        """The seed, batches handed out and the stream's shape, for an exact --resume."""
        return {
            "seed": self.seed, "batches_consumed": self.batches_consumed,
            "batch_size": self.batch_size, "world_size": self.world_size,
            "dataset_size": len(self.dataset_dicts), "repeat_factor_sampling": self.repeat_factors is not None,
        }

    def load_state_dict(self, state):
        """Continue the saved stream. With another world size or batch, continue after the same
        number of images (the order then differs from an uninterrupted run: logged)."""
        self.seed = int(state["seed"])
        same = (state["batch_size"], state["world_size"], state["dataset_size"],
                state.get("repeat_factor_sampling", False)) == (
            self.batch_size, self.world_size, len(self.dataset_dicts), self.repeat_factors is not None)
        if same:
            self.batches_consumed = int(state["batches_consumed"])
            return
        images = state["batches_consumed"] * state["batch_size"] * state["world_size"]
        self.batches_consumed = images // (self.batch_size * self.world_size)
        logger.warning(
            f"The checkpoint's data stream was {state['world_size']} process(es) x "
            f"{state['batch_size']} images over {state['dataset_size']} images"
            f"{' (repeat-factor sampling)' if state.get('repeat_factor_sampling') else ''}; this run has "
            f"{self.world_size} x {self.batch_size} over {len(self.dataset_dicts)}"
            f"{' (repeat-factor sampling)' if self.repeat_factors is not None else ''}: continuing "
            f"after the same {images} images, in a different order than an uninterrupted run"
        )

"""Each rank's share of the data: the same permutation on every rank, cut into strided shards.

With R ranks, epoch e's permutation of the N items (drawn from seed and e, so every rank draws the
same one) is first made a multiple of R long: padded with its own first items (drop_last=False, as
torch's DistributedSampler: a few items are seen twice an epoch) or cut (drop_last=True). Rank r
then takes items r, r + R, r + 2R, ... So batch b of every rank together is batch b of one process
whose batch is R times larger: R ranks at batch B/R train as one process at batch B.
"""
import math

import numpy as np


class DistributedSampler:
    """Args:
        dataset_size: N, the number of items (or the dataset itself).
        num_replicas, rank: R and r (a World's size and rank).
        shuffle: a new permutation each epoch (else 0 .. N-1 in order).
        seed: seeds the permutations; the same on every rank.
        drop_last: cut the permutation to a multiple of R instead of padding it.
        pad: False: no padding, ranks get ceil/floor shares (for evaluation, where a duplicated
            item would count twice).
    The epoch advances by itself each time the loader starts one (set_epoch(e) sets it, as torch).
    """

    def __init__(self, dataset_size, num_replicas, rank, shuffle=True, seed=0, drop_last=False, pad=True):
        n = dataset_size if isinstance(dataset_size, (int, np.integer)) else len(dataset_size)
        if not 0 <= rank < num_replicas:
            raise ValueError(f"DistributedSampler: rank {rank} is not in [0, {num_replicas})")
        self.n, self.num_replicas, self.rank = int(n), int(num_replicas), int(rank)
        self.shuffle, self.seed, self.drop_last, self.pad = bool(shuffle), int(seed), bool(drop_last), bool(pad)
        self.epoch = 0
        if self.drop_last and self.n < self.num_replicas:
            raise ValueError(f"DistributedSampler: {self.n} items cannot give each of {self.num_replicas} ranks one")

    @property
    def total_size(self):
        if not self.pad:
            return self.n
        per_rank = self.n // self.num_replicas if self.drop_last else math.ceil(self.n / self.num_replicas)
        return per_rank * self.num_replicas

    def __len__(self):
        """Items this rank gets per epoch."""
        return len(range(self.rank, self.total_size, self.num_replicas))

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def indices(self, epoch=None):
        """This rank's items of an epoch (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n) if self.shuffle else np.arange(self.n)
        if self.total_size > self.n:                  # pad with the permutation's own first items
            order = np.concatenate([order, np.resize(order, self.total_size - self.n)])
        return order[:self.total_size][self.rank::self.num_replicas]

    def next_epoch(self):
        """The current epoch's indices, then advance (what a DataLoader calls as an epoch starts)."""
        indices = self.indices()
        self.epoch += 1
        return indices

    def state_dict(self):
        return {"epoch": self.epoch}

    def load_state_dict(self, state):
        self.epoch = int(state["epoch"])

    def __repr__(self):
        return (f"DistributedSampler({self.n} items, rank {self.rank} of {self.num_replicas}, shuffle={self.shuffle}, "
                f"seed={self.seed}, drop_last={self.drop_last}, pad={self.pad})")

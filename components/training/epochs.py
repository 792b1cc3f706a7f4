"""Epoch state shared by the batch samplers: which epoch, and where inside it to (re)start.

This is the one mechanism for starting mid-epoch. A sampler's batches depend only on (seed,
epoch), so the state that a checkpoint must keep to reproduce them is (epoch, batches already
trained, seed). Both `PKBatchSampler` and `LabelNeighbourBatchSampler` keep it through this
mixin; a subclass sets `seed` and `batches_per_epoch`, starts its iteration at `start_batch`
and advances `position` as it yields batches. `components.training.data.BatchRequests` reads
`epoch` and `start_batch` from here (it has no start of its own) to label the batches it hands
to the loader.

Batches handed out are not batches trained: a DataLoader with loader processes draws
`prefetch_batches` per process ahead of the step. So the training loop passes the number of
steps it has actually trained to `state_dict(batches_done=...)`; `position` is the default
only for a consumer that iterates the sampler itself.
"""

from __future__ import annotations

from collections.abc import Mapping


class ResumableEpochs:
    seed: int
    batches_per_epoch: int
    epoch: int = 0
    start_batch: int = 0
    position: int = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch; the next iteration starts at batch ``start_batch`` (resume mid-epoch)."""
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch must be in [0, {self.batches_per_epoch}], got {start_batch}")
        self.epoch, self.start_batch, self.position = int(epoch), int(start_batch), int(start_batch)

    def state_dict(self, batches_done: int | None = None) -> dict[str, int]:
        """Where the iteration stands after ``batches_done`` batches of the current epoch
        (default: those this sampler's iterator handed out): save it with a checkpoint, restore
        it with ``load_state_dict``. An epoch that ran to its end resumes as ``set_epoch(epoch + 1)``."""
        done = self.position if batches_done is None else int(batches_done)
        if not 0 <= done <= self.batches_per_epoch:
            raise ValueError(f"batches_done must be in [0, {self.batches_per_epoch}], got {batches_done}")
        if done >= self.batches_per_epoch:
            return {"epoch": self.epoch + 1, "start_batch": 0, "seed": self.seed}
        return {"epoch": self.epoch, "start_batch": done, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"the checkpoint's sampler seed {state['seed']} differs from train.seed={self.seed}:"
                             " a resumed run would see other batches")
        self.set_epoch(state["epoch"], state["start_batch"])

    def __len__(self) -> int:
        """Batches in a whole epoch (also after ``set_epoch(..., start_batch=b)``)."""
        return self.batches_per_epoch

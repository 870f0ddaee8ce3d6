"""A callback for tests only: one rank crashes on its first training batch, as a bad batch would."""

from lightning.pytorch.callbacks import Callback


class CrashOnRank(Callback):
    def __init__(self, rank: int = 1, error: str = "RuntimeError"):
        self.rank = int(rank)
        self.error = error

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_rank == self.rank:
            exc = {"RuntimeError": RuntimeError, "ValueError": ValueError}[self.error]
            raise exc(f"bad batch {batch_idx} on rank {self.rank}: labels {batch['label'][:3].tolist()}")

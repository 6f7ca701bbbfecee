"""peftlab's single training loop (used by the study, `peftlab train` and users): `train(model, batches, loss_fn,
config)`."""

from peftlab.train.config import TrainConfig, TrainConfigError
from peftlab.train.device import (
    DeviceError,
    peak_memory_mb,
    process_peak_rss_mb,
    reset_peak_memory,
    resolve_device,
    synchronize,
)
from peftlab.train.loop import (
    NonFiniteLossError,
    TrainEvent,
    TrainingStopped,
    TrainResult,
    move_batch,
    run_evaluation,
    train,
)
from peftlab.train.seed import seed_everything

__all__ = [
    "DeviceError", "NonFiniteLossError", "TrainConfig", "TrainConfigError", "TrainEvent", "TrainResult",
    "TrainingStopped", "move_batch",
    "peak_memory_mb", "process_peak_rss_mb", "reset_peak_memory", "resolve_device", "run_evaluation",
    "seed_everything", "synchronize", "train",
]

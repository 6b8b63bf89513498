"""What the train/ scripts share: config, distributed set-up, checkpoints, LR schedule, metrics, signals,
non-finite step handling and a CPU-capable SyncBatchNorm. Plain PyTorch; nothing here needs wslfast._C."""
from .checkpoint import (CheckpointError, checkpoint_path, find_resumable, list_checkpoints, load_checkpoint,
                         save_checkpoint)
from .config import Config, ConfigError, load_config, parse_overrides
from .distributed import (DistInfo, all_ranks_max, broadcast_object, capture_rng, cleanup_distributed,
                          gather_objects, pick_device, restore_rng, seed_everything, setup_distributed)
from .guard import NonFiniteGuard, NonFiniteLossError, nonfinite_flag
from .metrics import MetricsLogger, format_line
from .schedule import SCHEDULES, LRSchedule
from .signals import StopSignals
from .sync_bn import GlobalBatchNorm2d, convert_sync_batchnorm

__all__ = [
    "CheckpointError", "checkpoint_path", "find_resumable", "list_checkpoints", "load_checkpoint",
    "save_checkpoint", "Config", "ConfigError", "load_config", "parse_overrides", "DistInfo",
    "all_ranks_max", "broadcast_object", "capture_rng", "cleanup_distributed", "gather_objects",
    "pick_device", "restore_rng", "seed_everything", "setup_distributed", "NonFiniteGuard",
    "NonFiniteLossError", "nonfinite_flag", "MetricsLogger", "format_line", "SCHEDULES", "LRSchedule",
    "StopSignals", "GlobalBatchNorm2d", "convert_sync_batchnorm",
]

"""What the train/ scripts share: typed config and command line, distributed set-up, run folders,
checkpoints, the LR rule and schedule, the optimizer, the shards a run reads, metrics, signals, non-finite
step handling and the guarded update every training loop makes, a CPU-capable SyncBatchNorm and the
pretraining objective module (the only piece that calls wslfast.ops, and only when its forward runs fused)."""
from .checkpoint import (CheckpointError, checkpoint_path, find_resumable, list_checkpoints, load_checkpoint,
                         load_weights, save_checkpoint)
from .cli import command_line, install_error_handler, is_user_error, usage
from .config import Config, ConfigError, config_keys, load_config, parse_overrides
from .distributed import (DistInfo, all_ranks_max, broadcast_object, capture_rng, cleanup_distributed,
                          gather_objects, params_digest, pick_device, attempt_store, peer_failure, restore_rng, seed_everything, setup_distributed)
from .guard import NonFiniteGuard, NonFiniteLossError, nonfinite_flag
from .objective import HashtagObjective, dense_soft_target_cross_entropy
from .metrics import MetricsLogger, format_duration, format_line, peak_memory
from .rundir import RunFolderError, check_run_folder, claim_run_folder, config_diff, write_run_file
from .optim import build_optimizer
from .schedule import SCHEDULES, LRSchedule, peak_learning_rate
from .signals import StopSignals
from .step import checked_digest, endless, exit_on_peer_failure, guarded_update
from .sync_bn import GlobalBatchNorm2d, convert_sync_batchnorm

__all__ = [
    "CheckpointError", "checkpoint_path", "find_resumable", "list_checkpoints", "load_checkpoint",
    "save_checkpoint", "Config", "ConfigError", "load_config", "parse_overrides", "DistInfo",
    "all_ranks_max", "broadcast_object", "capture_rng", "cleanup_distributed", "gather_objects", "params_digest", "HashtagObjective", "dense_soft_target_cross_entropy",
    "pick_device", "restore_rng", "seed_everything", "setup_distributed", "NonFiniteGuard",
    "NonFiniteLossError", "nonfinite_flag", "MetricsLogger", "format_line", "SCHEDULES", "LRSchedule",
    "StopSignals", "GlobalBatchNorm2d", "convert_sync_batchnorm", "load_weights", "command_line",
    "install_error_handler", "is_user_error", "usage", "format_duration", "peak_memory", "RunFolderError",
    "check_run_folder", "config_diff", "write_run_file", "attempt_store", "peer_failure", "config_keys",
    "build_optimizer", "peak_learning_rate", "claim_run_folder", "checked_digest", "endless",
    "exit_on_peer_failure", "guarded_update",
]

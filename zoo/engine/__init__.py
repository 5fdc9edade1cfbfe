"""Shared infrastructure for every harness: one training loop, seeding, logging, checkpoints, CLI, results.

See ``docs/engine.md``. A harness is a validated ``Config(RunConfig)``, a checkpointable data stream, a
``step_fn`` for :func:`fit`, and a ``main(argv)`` that ends in :func:`write_report`; ``tasks/copying.py`` is
the reference.
"""
from .checkpoint import (atomic_write, check_run_options, clean_stale_tmp, load_checkpoint, save_checkpoint, write_json,
                         write_text)
from .cli import (ConfigError, RunConfig, arg, warmup_arg, precision_arg, check_device, check_writable_dir,
                  check_writable_file, check_per_model, config_to_argv, config_to_dict, parse_config, run_options,
                  parse_json_object, per_model_kwargs, per_model_value, validate_config)
from .errors import CheckpointError, Interrupted, RunError, run_cli
from .jobs import RunLock, check_finite, command_line, default_workers, per_run, run_grid, run_jobs, write_report
from .logger import MetricLogger
from .memory import memory_retained, retain_freed_memory
from .loop import (PRECISIONS, SCHEDULES, FitResult, NonFiniteError, autocast_context, cycle, fit, lr_schedule,
                   native_bf16, request_stop, stop_requested, to_device)
from .results import fmt_mean_std, markdown_table, summarize_seeds
from .seed import resolve_device, seed_everything
from .streams import MapStream, SeededStream, ShuffledBatches, Stream, ZipStream, restore_stream, stream_state

__all__ = [
    # checkpoints and files
    "atomic_write", "check_run_options", "clean_stale_tmp", "load_checkpoint", "save_checkpoint", "write_json", "write_text",
    # configs and errors
    "ConfigError", "RunConfig", "arg", "warmup_arg", "precision_arg", "check_device", "check_writable_dir",
    "check_writable_file",
    "check_per_model", "config_to_argv", "config_to_dict", "parse_config", "run_options", "parse_json_object", "per_model_kwargs",
    "per_model_value", "validate_config",
    "CheckpointError", "Interrupted", "RunError", "NonFiniteError", "run_cli",
    # training
    "FitResult", "cycle", "fit", "lr_schedule", "SCHEDULES", "request_stop", "stop_requested", "to_device", "MetricLogger",
    "PRECISIONS", "autocast_context", "native_bf16",
    "Stream", "SeededStream", "ShuffledBatches", "ZipStream", "MapStream", "restore_stream", "stream_state",
    "resolve_device", "seed_everything", "retain_freed_memory", "memory_retained",
    # grids and reports
    "RunLock", "check_finite", "command_line", "default_workers", "per_run", "run_grid", "run_jobs", "write_report",
    "fmt_mean_std", "markdown_table", "summarize_seeds",
]

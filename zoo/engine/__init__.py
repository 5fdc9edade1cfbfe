"""Shared infrastructure for every harness: one training loop, seeding, logging, checkpoints, CLI, results."""
from .checkpoint import atomic_write, load_checkpoint, save_checkpoint, write_json, write_text
from .cli import (ConfigError, RunConfig, arg, check_device, check_writable_dir, check_writable_file,
                  config_to_dict, parse_config, parse_json_object, validate_config)
from .errors import CheckpointError, Interrupted, RunError, run_cli
from .jobs import command_line, default_workers, run_grid, run_jobs, write_report
from .logger import MetricLogger
from .loop import FitResult, cycle, fit, to_device
from .results import markdown_table, summarize_seeds
from .streams import MapStream, SeededStream, ShuffledBatches, Stream, ZipStream, restore_stream, stream_state
from .seed import resolve_device, seed_everything

__all__ = [
    "atomic_write", "load_checkpoint", "save_checkpoint", "write_json", "write_text",
    "arg", "config_to_dict", "parse_config", "ConfigError", "RunConfig", "validate_config", "check_device",
    "check_writable_dir", "check_writable_file", "parse_json_object", "RunError", "CheckpointError", "Interrupted",
    "run_cli", "MetricLogger", "default_workers", "run_jobs", "run_grid", "command_line", "write_report",
    "FitResult", "cycle", "fit", "to_device",
    "markdown_table", "summarize_seeds", "Stream", "SeededStream", "ShuffledBatches", "ZipStream", "MapStream",
    "stream_state", "restore_stream", "resolve_device", "seed_everything",
]

"""Configuration: jobs, schedules and strict TOML validation."""

from hpcps.config.errors import ConfigError
from hpcps.config.job import Job, load_job
from hpcps.config.schedule import Schedule, WorkerSpec, default_schedule, load_schedule

__all__ = ["ConfigError", "Job", "load_job", "Schedule", "WorkerSpec", "default_schedule", "load_schedule"]

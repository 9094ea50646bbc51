"""Settings: one pydantic-settings model, environment variables prefixed ``ASYNCFLOW_``.

Read at the edges (runner construction, flow start), never on the scheduler's hot path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .exceptions import SettingsError

__all__ = ("Settings", "get_settings")


class Settings(BaseSettings):
    """asyncflow's settings; each field is read from ``ASYNCFLOW_<FIELD NAME IN CAPITALS>``."""

    model_config = SettingsConfigDict(env_prefix="ASYNCFLOW_", extra="ignore", frozen=True)

    thread_pool_max_workers: int | None = Field(default=None, ge=1)
    process_pool_max_workers: int | None = Field(default=None, ge=1)
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    default_retries: int = Field(default=0, ge=0)
    default_retry_delay: float = Field(default=0.0, ge=0)
    cache_dir: Path | None = None
    # Level of the ``asyncflow`` loggers (task run loggers included), set when a runner starts.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    @field_validator("cache_dir", mode="before")
    @classmethod
    def _not_empty(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            raise ValueError("must be a directory, not empty (unset it for the default)")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


_PREFIX = "ASYNCFLOW_"

# The last settings read, and the variables they were read from. Building the model costs
# about 0.35 ms (pydantic-settings inspects every field's type for every source), most of what
# an async flow call cost: each call makes its own runner. The model reads nothing but these
# variables (no .env file, no secrets directory) and is frozen, so the same variables give the
# same settings, and one instance can be shared.
_last: tuple[tuple[tuple[str, str | None], ...], Settings] | None = None


def get_settings() -> Settings:
    """Read the settings from the environment now; an invalid value names its variable."""
    global _last  # (one entry, replaced whole: safe across threads)
    key = _variables()
    last = _last
    if last is not None and last[0] == key:
        return last[1]
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            problems.append(f"ASYNCFLOW_{field.upper()}={err.get('input')!r}: {err['msg']}")
        raise SettingsError("invalid setting: " + "; ".join(problems)) from None
    if _variables() == key:  # (not changed by another thread while they were read)
        _last = (key, settings)
    return settings


def _variables() -> tuple[tuple[str, str | None], ...]:
    # (Names in any case: pydantic-settings matches them without regard to case.)
    env = os.environ
    return tuple([(k, env.get(k)) for k in env if k[:10].upper() == _PREFIX])

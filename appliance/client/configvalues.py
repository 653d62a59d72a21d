"""The shapes a client config file's values take once read, shared by its readers and checks.

Kept apart so the Ruby reader (`rubyparse`), the regex translator (`rubyregex`), the settings
checks (`settings_table`) and the public `config` module all use one definition without
importing each other in a circle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["MAX_CONFIG_CHARS", "ConfigError", "RubyConst", "RubyRegex", "Symbol", "WhitelistEntry"]

MAX_CONFIG_CHARS = 4 * 1024 * 1024


class ConfigError(ValueError):
    """A bad config file or flag; ``str()`` is ``FILE:LINE: message``."""

    def __init__(self, path: str | None, line: int | None, message: str) -> None:
        self.path = path
        self.line = line
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.path is not None and self.line is not None:
            return f"{self.path}:{self.line}: {self.message}"
        if self.path is not None:
            return f"{self.path}: {self.message}"
        return self.message


@dataclass(frozen=True)
class Symbol:
    """A Ruby symbol (``:name``); kept apart from strings, as Ruby keeps them apart."""

    name: str

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f":{self.name}"


@dataclass(frozen=True)
class RubyRegex:
    """A Ruby regex literal as written: compile it with `ruby_regex`."""

    source: str
    flags: str = ""

    def __repr__(self) -> str:
        return f"/{self.source}/{self.flags}"


@dataclass(frozen=True)
class RubyConst:
    """``STDOUT`` or ``STDERR`` as written (the only constants a value may be)."""

    name: str  # STDOUT or STDERR


@dataclass(frozen=True)
class WhitelistEntry:
    """One whitelist line: exact job name or compiled regex → command line (and lock)."""

    key: str | re.Pattern[str]
    command_line: str
    lock: bool | str | None = None

"""Flag sources push whole documents into a :class:`flags.store.FlagStore`."""

from flags.sources.base import FlagSource
from flags.sources.file import FileFlagSource
from flags.sources.memory import MemoryFlagSource
from flags.sources.redis_source import RedisFlagSource

__all__ = ["FileFlagSource", "FlagSource", "MemoryFlagSource", "RedisFlagSource"]

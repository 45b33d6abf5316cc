"""The realtime capability: blocks publish JSON messages to their tenant's channels, and
browsers listen on /ws/realtime/<tenant>/<channel> (docs/realtime.md)."""

from capabilities.realtime.handlers import realtime_publish

__all__ = ["realtime_publish"]

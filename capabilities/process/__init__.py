"""The process capability: allow-listed commands in a bubblewrap sandbox (docs/process.md)."""

from capabilities.process.handler import execute

__all__ = ["execute"]

"""The server: dispatcher, heartbeat, scheduler and reaper loops under one supervisor."""

from .server import Server, ServerConfig

__all__ = ["Server", "ServerConfig"]

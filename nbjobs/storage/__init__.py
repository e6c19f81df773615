"""Storage: the one `Store` interface and its SQLAlchemy implementation."""

from .base import Enqueued, HeartbeatReply, JobFilter, ReapReport, Store
from .sql import SqlStore

__all__ = ["Enqueued", "HeartbeatReply", "JobFilter", "ReapReport", "SqlStore", "Store"]

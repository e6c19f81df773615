"""Storage: the one `Store` interface and its SQLAlchemy implementation."""

from .base import Enqueued, HeartbeatReply, JobFilter, LocalClaim, ReapReport, Store
from .sql import SqlStore

__all__ = ["Enqueued", "HeartbeatReply", "JobFilter", "LocalClaim", "ReapReport", "SqlStore", "Store"]

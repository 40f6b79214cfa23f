"""celeriac: a distributed task queue built as a small pluggy kernel plus plugins.

The public API is what this module exports; plugins import only from here (and
``celeriac.testing`` in their tests).
"""

from __future__ import annotations

from . import states
from ._envelope import Delivery, Envelope
from .app import Celeriac, current_app
from .canvas import Signature, chain, chord, chunks, group, maybe_signature, signature, xmap, xstarmap
from .codec import Compressor, MessageCodec, MessageFilter
from .config import Config, Setting, mask_url
from .exceptions import (
    CeleriacError,
    ChordError,
    ConfigError,
    ContentDisallowed,
    DecodeError,
    HandledError,
    Ignore,
    MaxRetriesExceededError,
    NotRegistered,
    PluginError,
    Reject,
    RemoteTaskError,
    Retry,
    SerializationError,
    SoftTimeLimitExceeded,
    TaskRevokedError,
    Terminated,
    TimeLimitExceeded,
    TimeoutError,
    TransportError,
    WorkerLostError,
)
from .hookspecs import hookimpl, hookspec
from .message import TaskMessage, decode_task_message, encode_task_message
from .pool import Pool, TimeLimits
from .result import AsyncResult, EagerResult, GroupResult
from .resultstore import ResultRecord, ResultStore
from .serialization import Serializer, SerializerRegistry
from .task import Request, SharedTask, Task, current_request, shared_task
from .transport import Subscription, Transport
from .worker import Worker

__version__ = "0.1.0"

__all__ = [
    "AsyncResult",
    "Celeriac",
    "CeleriacError",
    "ChordError",
    "Compressor",
    "Config",
    "ConfigError",
    "ContentDisallowed",
    "DecodeError",
    "Delivery",
    "EagerResult",
    "Envelope",
    "GroupResult",
    "HandledError",
    "Ignore",
    "MaxRetriesExceededError",
    "MessageCodec",
    "MessageFilter",
    "NotRegistered",
    "PluginError",
    "Pool",
    "Reject",
    "RemoteTaskError",
    "Request",
    "ResultRecord",
    "ResultStore",
    "Retry",
    "SerializationError",
    "Serializer",
    "SerializerRegistry",
    "Setting",
    "SharedTask",
    "Signature",
    "SoftTimeLimitExceeded",
    "Subscription",
    "Task",
    "TaskMessage",
    "TaskRevokedError",
    "Terminated",
    "TimeLimitExceeded",
    "TimeLimits",
    "TimeoutError",
    "Transport",
    "TransportError",
    "Worker",
    "WorkerLostError",
    "__version__",
    "chain",
    "chord",
    "chunks",
    "current_app",
    "current_request",
    "decode_task_message",
    "encode_task_message",
    "group",
    "hookimpl",
    "hookspec",
    "mask_url",
    "maybe_signature",
    "shared_task",
    "signature",
    "states",
    "xmap",
    "xstarmap",
]

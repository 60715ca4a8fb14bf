"""agentrt: typed actors over NATS, for multi-agent systems that run in production.

Layering: ``_errors`` / ``_ids`` / ``_messages`` / ``_envelope`` (data) → ``_bus`` (NATS in a
thread, seen from trio) → ``_agent`` / ``_actor`` (handlers, mailboxes, supervision) →
``_node`` (send/publish/serve) → ``_config`` / ``_cluster`` / ``_cli`` (``agentrt up``).
Everything public is re-exported here; the ``_modules`` are private.
"""

from __future__ import annotations

from ._accounting import ModelStats as ModelStats
from ._agent import Agent as Agent
from ._agent import RestartPolicy as RestartPolicy
from ._cache import CacheCount as CacheCount
from ._cache import ToolRule as ToolRule
from ._control import AgentStats as AgentStats
from ._control import McpServerHealth as McpServerHealth
from ._control import NodeStatus as NodeStatus
from ._envelope import ContentType as ContentType
from ._envelope import Envelope as Envelope
from ._envelope import Kind as Kind
from ._errors import AgentDefinitionError as AgentDefinitionError
from ._errors import AgentrtError as AgentrtError
from ._errors import AgentUnavailable as AgentUnavailable
from ._errors import BusError as BusError
from ._errors import ClusterNotRunning as ClusterNotRunning
from ._errors import ConfigError as ConfigError
from ._errors import ContextTooLong as ContextTooLong
from ._errors import DeadlineExceeded as DeadlineExceeded
from ._errors import DeliveryError as DeliveryError
from ._errors import GateError as GateError
from ._errors import HandlerFailed as HandlerFailed
from ._errors import MalformedMessage as MalformedMessage
from ._errors import MalformedModelOutput as MalformedModelOutput
from ._errors import McpServerError as McpServerError
from ._errors import ModelError as ModelError
from ._errors import ModelOverloaded as ModelOverloaded
from ._errors import ModelRequestRejected as ModelRequestRejected
from ._errors import ModelTimeout as ModelTimeout
from ._errors import NatsServerError as NatsServerError
from ._errors import NoHandler as NoHandler
from ._errors import NoModelAvailable as NoModelAvailable
from ._errors import Overloaded as Overloaded
from ._errors import PayloadTooLarge as PayloadTooLarge
from ._errors import PermissionViolation as PermissionViolation
from ._errors import PolicyDenied as PolicyDenied
from ._errors import RateLimited as RateLimited
from ._errors import RemoteError as RemoteError
from ._errors import SchemaError as SchemaError
from ._errors import StepLimitExceeded as StepLimitExceeded
from ._errors import ToolCallAsText as ToolCallAsText
from ._errors import TransformError as TransformError
from ._errors import TransformMemoryExceeded as TransformMemoryExceeded
from ._errors import TransformOutOfFuel as TransformOutOfFuel
from ._errors import TransformTimeout as TransformTimeout
from ._errors import TransformTrapped as TransformTrapped
from ._errors import UnexpectedReply as UnexpectedReply
from ._errors import UnknownMessageType as UnknownMessageType
from ._errors import Violation as Violation
from ._gate import GateCount as GateCount
from ._gate import Outcome as Outcome
from ._ids import AgentId as AgentId
from ._messages import Message as Message
from ._messages import register_message as register_message
from ._node import Node as Node
from ._node import NodeConfig as NodeConfig
from ._node import open_client as open_client
from ._node import open_node as open_node
from ._scheduler import ModelSession as ModelSession
from ._scheduler import Scheduler as Scheduler
from ._scheduler import open_scheduler as open_scheduler
from ._tools import Fallback as Fallback
from ._tools import Tool as Tool
from ._tools import ToolSpec as ToolSpec
from ._tools import make_tool as make_tool
from ._tools import tool as tool

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AgentDefinitionError",
    "AgentId",
    "AgentStats",
    "AgentUnavailable",
    "AgentrtError",
    "BusError",
    "CacheCount",
    "ClusterNotRunning",
    "ConfigError",
    "ContentType",
    "ContextTooLong",
    "DeadlineExceeded",
    "DeliveryError",
    "Envelope",
    "Fallback",
    "GateCount",
    "GateError",
    "HandlerFailed",
    "Kind",
    "MalformedMessage",
    "MalformedModelOutput",
    "McpServerError",
    "McpServerHealth",
    "Message",
    "ModelError",
    "ModelOverloaded",
    "ModelRequestRejected",
    "ModelSession",
    "ModelStats",
    "ModelTimeout",
    "NatsServerError",
    "NoHandler",
    "NoModelAvailable",
    "Node",
    "NodeConfig",
    "NodeStatus",
    "Outcome",
    "Overloaded",
    "PayloadTooLarge",
    "PermissionViolation",
    "PolicyDenied",
    "RateLimited",
    "RemoteError",
    "RestartPolicy",
    "Scheduler",
    "SchemaError",
    "StepLimitExceeded",
    "Tool",
    "ToolCallAsText",
    "ToolRule",
    "ToolSpec",
    "TransformError",
    "TransformMemoryExceeded",
    "TransformOutOfFuel",
    "TransformTimeout",
    "TransformTrapped",
    "UnexpectedReply",
    "UnknownMessageType",
    "Violation",
    "make_tool",
    "open_client",
    "open_node",
    "open_scheduler",
    "register_message",
    "tool",
]


def _fixup_module_metadata() -> None:
    # Tracebacks, reprs and pickles say `agentrt.X`, not `agentrt._module.X`. Annotations are
    # strings (`from __future__ import annotations`) that typing resolves in `__module__`, so
    # they are resolved first, while `__module__` still names the defining module.
    import typing

    import msgspec

    for name in __all__:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith("agentrt._"):
            if isinstance(obj, type) and issubclass(obj, msgspec.Struct):
                obj.__annotations__ = typing.get_type_hints(obj)
            obj.__module__ = __name__


_fixup_module_metadata()
del _fixup_module_metadata, annotations

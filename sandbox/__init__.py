"""Sandbox policies (``agentrt.sandbox``): what each node may do, enforced in the node and by
the broker: confined file operations (``FileAccess``), file transfer between nodes under both
nodes' policies (``FileTransfer``) and wasm transforms run under fuel, time and memory limits
(``TransformHost``).
"""

from __future__ import annotations

from agentrt import PolicyDenied as PolicyDenied

from ._files import FileAccess as FileAccess
from ._files import detect_type as detect_type
from ._permissions import nats_permissions as nats_permissions
from ._policy import FileRoot as FileRoot
from ._policy import FileRules as FileRules
from ._policy import NetworkRules as NetworkRules
from ._policy import Policy as Policy
from ._policy import ToolRules as ToolRules
from ._policy import TransformRules as TransformRules
from ._policy import load_policy as load_policy
from ._transfer import FileTransfer as FileTransfer
from ._transfer import TransferError as TransferError
from ._transform import Limits as Limits
from ._transform import TransformHost as TransformHost
from ._transform_tools import csv2json as csv2json
from ._transform_tools import normalize_text as normalize_text
from ._transform_tools import ppm2pgm as ppm2pgm
from ._transform_tools import transform_tool as transform_tool

__all__ = [
    "FileAccess",
    "FileRoot",
    "FileRules",
    "FileTransfer",
    "Limits",
    "NetworkRules",
    "Policy",
    "PolicyDenied",
    "ToolRules",
    "TransferError",
    "TransformHost",
    "TransformRules",
    "csv2json",
    "detect_type",
    "load_policy",
    "nats_permissions",
    "normalize_text",
    "ppm2pgm",
    "transform_tool",
]

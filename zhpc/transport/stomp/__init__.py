"""ActiveMQ transport over STOMP 1.2 (stomp.py), wire-compatible with workflows' StompTransport.

:mod:`.connection` owns the stomp.py connection and its receiver thread,
:mod:`.transport` is what a service calls, :mod:`.wire` holds destination
names and header encoding. docs/stomp.md describes the semantics and where
they differ from RabbitMQ's.
"""

from __future__ import annotations

from zhpc.transport.stomp.connection import ConnectionLostError
from zhpc.transport.stomp.transport import StompTransport

__all__ = ["ConnectionLostError", "StompTransport"]

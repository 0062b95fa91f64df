"""RabbitMQ transport over pika, with publisher confirms and pipelined commits.

Threads, and who owns what (the boundary is the module boundary):

* **The I/O thread** (one per transport, so one connection per process):
  :class:`~zhpc.transport.rabbitmq.iothread.IOThread` owns every pika object —
  the connection, the work channel (confirm mode: publishes, consumers, acks)
  and the topology channel (declares), the confirm numbering and the map of
  unconfirmed publishes, the channel generations and the queue of topology
  calls. Nothing else touches them.
* **Caller threads** (normally the service's main thread) call
  :class:`RabbitMQTransport` (:mod:`.transport`), which never touches pika's
  connection or channels: it hands work to the I/O thread (a deque plus
  ``ioloop.add_callback_threadsafe``) and waits on ``concurrent.futures``.
  Deliveries come back through a ``queue.Queue`` that :meth:`~RabbitMQTransport.poll`
  drains, running subscription callbacks on the polling thread.
* **A short-lived recovery thread** after each reconnection re-declares and
  re-subscribes using the same blocking calls as a caller (it must not block
  the I/O thread it is waiting for).
* What the two sides hand each other (subscriptions, batches of publishes,
  deliveries) and the errors they fail with are :mod:`.handoff`.
* What is declared is cached by :class:`~zhpc.transport.rabbitmq.topology.Topology`
  on the caller side, under its own lock; the I/O thread never writes it.

:mod:`.wire` holds what the messages and queues look like on the wire
(properties, queue arguments, TLS, masking, names), without threads or I/O.

Wire compatibility with python-workflows/Zocalo: queue sends go through the
default exchange with ``mandatory=True``; broadcasts go to a fanout exchange
named by the topic (e.g. ``transient.status``) with routing key ``""`` and
without ``mandatory``; messages are persistent and carry their headers as is.
"""

from __future__ import annotations

from zhpc.transport.rabbitmq.handoff import ConnectionLostError
from zhpc.transport.rabbitmq.transport import RabbitMQTransport
from zhpc.transport.rabbitmq.wire import DELAY_QUEUE_PREFIX

__all__ = ["DELAY_QUEUE_PREFIX", "ConnectionLostError", "RabbitMQTransport"]

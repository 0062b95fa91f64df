"""Run one service in its own process, the way a batch job would (tests only).

Usage: runner.py URL SERVICE QUEUE [--prefetch N] [--drain-grace S] [--idle-timeout S]
[--work S] [--param KEY=JSON ...]. SERVICE is an installed plug-in (``double``,
``jsonlines``), ``sleepy``, a test service that records which process handled
which delivery, or ``poison``, which SIGKILLs itself on a poison payload.
``--work`` adds that many seconds of simulated work per message. URL may be a JSON
list of URLs (the nodes of a cluster).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from zhpc import plugins
from zhpc.config import BrokerConfig, Config, ServiceConfig
from zhpc.recipe import RecipeWrapper
from zhpc.service import Service, ServiceRunner
from zhpc.transport import get_transport
from zhpc.transport.base import HANDBACK_HEADER


class Sleepy(Service):
    """Touches ``marker_dir/<pid>``, sleeps ``sleep`` s, then passes the payload on with who/how."""

    def process(self, rw: RecipeWrapper, payload: Any) -> None:
        message = self.current_message
        assert message is not None
        marker = self.parameters.get("marker_dir")
        if marker:
            Path(marker, str(os.getpid())).touch()
        time.sleep(float(self.parameters.get("sleep", 0)))  # simulated work, interruptible
        rw.send(
            {
                **payload,
                "pid": os.getpid(),
                "delivery_count": message.delivery_count,
                "handbacks": message.headers.get(HANDBACK_HEADER, 0),
            }
        )


class Poison(Service):
    """Passes payloads on, but SIGKILLs its own process on a payload with ``"poison"``."""

    def process(self, rw: RecipeWrapper, payload: Any) -> None:
        if payload.get("poison"):
            os.kill(os.getpid(), signal.SIGKILL)
        rw.send(payload)


TEST_SERVICES: dict[str, type[Service]] = {"sleepy": Sleepy, "poison": Poison}


def with_work(cls: type[Service], seconds: float) -> type[Service]:
    """``cls`` whose ``process`` first spends ``seconds`` (simulated work; interruptible)."""

    def process(self: Service, rw: RecipeWrapper, payload: Any) -> None:
        time.sleep(seconds)
        cls.process(self, rw, payload)

    return type(f"Slow{cls.__name__}", (cls,), {"process": process})


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("service")
    parser.add_argument("queue")
    parser.add_argument("--prefetch", type=int, default=10)
    parser.add_argument("--drain-grace", type=float, default=10.0)
    parser.add_argument("--idle-timeout", type=float)
    parser.add_argument("--delivery-limit", type=int, default=5)
    parser.add_argument("--work", type=float, default=0.0)
    parser.add_argument("--param", action="append", default=[], metavar="KEY=JSON")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(process)d %(name)s %(message)s"
    )
    cls = TEST_SERVICES.get(args.service) or plugins.load(plugins.SERVICES, args.service)
    if args.work:
        cls = with_work(cls, args.work)
    parameters = {k: json.loads(v) for k, v in (p.split("=", 1) for p in args.param)}
    url = json.loads(args.url) if args.url.startswith("[") else args.url  # a cluster's nodes
    config = Config(
        broker=BrokerConfig(
            url=url, delivery_limit=args.delivery_limit, connection_attempts=60, retry_delay=0.5
        )
    )
    settings = ServiceConfig(
        queue=args.queue,
        prefetch=args.prefetch,
        drain_grace=args.drain_grace,
        idle_timeout=args.idle_timeout,
        parameters=parameters,
    )
    transport = get_transport(config.broker)
    with transport:
        return ServiceRunner(cls(args.service, settings, config), transport).run()


if __name__ == "__main__":
    sys.exit(main())

"""A transport client run as a subprocess by the conformance suite, to be killed at will.

Usage: ``helper_client.py URL MODE NAME [options]``. It prints ``ready`` once
subscribed, then one line per event, flushed, so the test can act on them.

Modes:
  hold       consume NAME, print ``got <body> <delivery_count>``, never settle.
  commit     consume NAME, commit one output per input to ``--out``; print ``done <n>``.
  broadcast  subscribe to topic NAME, print ``got <body>``.
"""

from __future__ import annotations

import argparse
import sys
import time

from zhpc.config import BrokerConfig
from zhpc.message import Message, Outgoing
from zhpc.transport import get_transport


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("mode", choices=("hold", "commit", "broadcast"))
    parser.add_argument("name")
    parser.add_argument("--out", help="output queue (commit mode)")
    parser.add_argument("--prefetch", type=int, default=10)
    parser.add_argument("--work", type=float, default=0.0, help="seconds of 'work' per message")
    parser.add_argument("--heartbeat", type=int, default=60)
    args = parser.parse_args()

    transport = get_transport(BrokerConfig(url=args.url, heartbeat=args.heartbeat))
    transport.connect()
    done = 0

    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def hold(message: Message) -> None:
        say(f"got {message.body.decode('utf-8', 'replace')} {message.delivery_count}")

    def commit(message: Message) -> None:
        nonlocal done
        if args.work:
            time.sleep(args.work)  # stands for processing time
        transport.commit([Outgoing(destination=args.out, body=message.body)], ack=message)
        done += 1
        say(f"done {done}")

    if args.mode == "hold":
        transport.subscribe(args.name, hold, prefetch=args.prefetch)
    elif args.mode == "commit":
        transport.subscribe(args.name, commit, prefetch=args.prefetch)
    else:
        transport.subscribe_broadcast(args.name, hold)
    say("ready")
    while True:
        transport.poll(1.0)


if __name__ == "__main__":
    sys.exit(main())

"""``zhpc trace RECIPE_ID``: every step of one recipe, where it ran, how long, why it failed.

Reads the events the recorder stored (``zhpc service -s recorder``, store:
``events.url``) and links dead-lettered steps to their quarantine entries
(``zhpc dlq``). ``--follow`` redraws until the recipe is finished.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from zhpc.config import Config

#: Seconds between two looks at the store with --follow.
FOLLOW_INTERVAL = 1.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "trace",
        help="show every step of a recipe: outcome, host, job, duration, error",
        description="The steps of one recipe (its environment.ID) in recipe order, from the "
        "events kept by the recorder service; steps not reached yet show as waiting.",
    )
    parser.add_argument("recipe_id", metavar="RECIPE_ID")
    parser.add_argument(
        "--json", action="store_true", help='one JSON object {"recipe_id": ..., "steps": [...]}'
    )
    parser.add_argument(
        "--follow", action="store_true", help="keep updating until the recipe is finished"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="with --follow: give up after this long (exit 1)",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from zhpc.config import load_config
    from zhpc.eventstore import open_event_store

    config = load_config(args.config, args.environment)
    with open_event_store(config.events) as store:
        if not args.follow:
            trace = collect(store, config, args.recipe_id)
            _show(trace, args.json)
            return 0 if trace["steps"] else 1  # nothing known of it: say so in the status too
        return _follow(store, config, args)


def collect(store: Any, config: Config, recipe_id: str) -> dict[str, Any]:
    """The trace of ``recipe_id`` from the event store, with quarantine ids where filed."""
    from zhpc.events import DEAD_LETTERED
    from zhpc.trace import build_trace

    events = store.for_recipe(recipe_id)
    lookup = None
    if any(event.get("event") == DEAD_LETTERED for event in events):
        lookup = _quarantine_lookup(config)
    return build_trace(recipe_id, events, lookup)


def _quarantine_lookup(config: Config) -> Any:
    from zhpc.errors import ZhpcError
    from zhpc.quarantine import open_store

    try:
        store = open_store(config.quarantine)
    except ZhpcError as exc:
        print(f"zhpc trace: quarantine store not read: {exc}", file=sys.stderr)
        return None

    def lookup(message_id: str) -> str | None:
        try:
            entry = store.get(message_id)
        except ZhpcError:
            return None
        return entry.id if entry is not None else None

    return lookup


def _show(trace: dict[str, Any], as_json: bool) -> None:
    from zhpc.trace import render

    print(json.dumps(trace) if as_json else render(trace), flush=True)


def _follow(store: Any, config: Config, args: argparse.Namespace) -> int:
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    redraw = sys.stdout.isatty() and not args.json
    shown = None
    try:
        while True:
            trace = collect(store, config, args.recipe_id)
            if trace != shown:
                if redraw:
                    print("\033[H\033[2J", end="")
                _show(trace, args.json)
                shown = trace
            if trace["finished"]:
                return 0
            if deadline is not None and time.monotonic() >= deadline:
                print(
                    f"zhpc trace: recipe {args.recipe_id} not finished after {args.timeout:g} s",
                    file=sys.stderr,
                )
                return 1
            time.sleep(FOLLOW_INTERVAL)
    except KeyboardInterrupt:
        return 130

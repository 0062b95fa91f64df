"""``zhpc go``: ask the Dispatcher to run recipes (Zocalo's ``zocalo.go``), and ``--pickup``.

The request is checked here first (recipes loaded and merged, parameters
applied, the result validated), so a mistake is reported at once rather than
in the Dispatcher's error queue. The recipe id is made here too (parameter
``guid``, which the Dispatcher uses as the recipe id), so the printed id is
the id the recipe runs under.

Exit codes: 0 sent (or ``--dry-run``), 2 an error (nothing sent, nothing
saved), 3 the broker could not be reached and the request was saved in the
spool (``$ZHPC_HOME/spool``): do not send it again, ``zhpc go --pickup`` will.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

TYPE_CHECKING = False  # not typing's: ``zhpc go --help`` should not import typing
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

    from zhpc.config import Config
    from zhpc.dispatch import DispatchRequest

#: Exit code when the request was saved in the spool instead of sent.
EXIT_SPOOLED = 3
#: Connection attempts before a request is spooled: it is safe in the spool, so
#: an interactive command should not wait minutes for a broker that is down.
GO_CONNECTION_ATTEMPTS = 3
#: Seconds ``zhpc go`` waits for a confirm (a blocked broker) before it spools instead.
GO_CONFIRM_TIMEOUT = 15.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "go",
        help="run recipes: send a request to the Dispatcher",
        description="Send a processing request to the Dispatcher (in zocalo.go's format) and "
        "print the recipe id. If the broker cannot be reached the request is saved in "
        "$ZHPC_HOME/spool and the exit code is 3; 'zhpc go --pickup' sends saved requests.",
    )
    parser.add_argument(
        "recipes",
        nargs="*",
        metavar="RECIPE",
        help="recipe names (files in recipes.directory, without suffix)",
    )
    parser.add_argument(
        "-s",
        "--set",
        dest="parameters",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a recipe parameter (a string; repeatable)",
    )
    parser.add_argument(
        "-f", "--file", metavar="FILE", help="also run the recipe in this JSON or YAML file"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the request and print it instead of sending it",
    )
    parser.add_argument(
        "--allow-unfilled",
        action="store_true",
        help="send even if templates such as {name} are left unfilled "
        "(a site lookup in the Dispatcher may fill them)",
    )
    parser.add_argument(
        "--pickup", action="store_true", help="send the requests saved in the spool, oldest first"
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    import logging

    transport_log = logging.getLogger("zhpc.transport")
    level = transport_log.level
    if args.verbose <= 0:
        # Connection failures are reported here, in one line; the transport's own log
        # lines about them would only repeat it.
        transport_log.setLevel(logging.CRITICAL)
    try:
        return _go(args)
    finally:
        transport_log.setLevel(level)


def _go(args: argparse.Namespace) -> int:
    from zhpc.config import load_config
    from zhpc.errors import ZhpcError

    config = load_config(args.config, args.environment)
    if args.pickup:
        if args.recipes or args.parameters or args.file or args.dry_run or args.allow_unfilled:
            raise ZhpcError("--pickup takes no recipes or other options")
        return pickup(config)
    request = build_request(args.recipes, args.parameters, args.file)
    unfilled = validate(request, config)
    if unfilled and not args.allow_unfilled:
        raise ZhpcError(
            f"templates left unfilled: {', '.join(unfilled)}; set them with "
            "-s NAME=VALUE, or pass --allow-unfilled"
        )
    if args.dry_run:
        import json

        from zhpc.dispatch import request_headers

        print(
            json.dumps(
                {
                    "queue": dispatcher_queue(config),
                    "headers": request_headers(),
                    "message": request.to_body(),
                    "unfilled": unfilled,
                },
                indent=2,
            )
        )
        return 0
    sent, where = send_request(request, config)
    print(request.guid)
    if sent:
        return 0
    from zhpc.spool import default_spool

    print(
        f"zhpc go: {where}; request saved in the spool ({default_spool()}), "
        "'zhpc go --pickup' sends it",
        file=sys.stderr,
    )
    return EXIT_SPOOLED


def parse_parameters(pairs: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings to a mapping (values stay strings, as in zocalo.go)."""
    from zhpc.errors import ZhpcError

    parameters: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ZhpcError(f"invalid parameter {pair!r}: use KEY=VALUE")
        parameters[key.strip()] = value
    return parameters


def build_request(
    recipes: list[str], parameter_pairs: list[str], custom_file: str | None = None
) -> DispatchRequest:
    """The request for these command-line arguments, with a fresh guid unless one is set."""
    import json
    import uuid

    from zhpc.dispatch import DispatchRequest
    from zhpc.errors import ZhpcError
    from zhpc.recipe import load_recipe_file

    if not recipes and not custom_file:
        raise ZhpcError("name at least one recipe, or a recipe file with -f")
    parameters: dict[str, Any] = parse_parameters(parameter_pairs)
    custom = None
    if custom_file:
        recipe = load_recipe_file(custom_file)
        recipe.validate()
        custom = json.loads(recipe.to_json())
    if not str(parameters.get("guid", "")).strip():
        parameters["guid"] = str(uuid.uuid4())
    return DispatchRequest.from_body(
        {"recipes": list(recipes), "parameters": parameters, "custom_recipe": custom}
    )


#: Names filled after go: by the Dispatcher's built-in lookup, and ``payload`` by zhpc wrap.
_FILLED_LATER = ("dispatch_time", "dispatch_host", "payload")


def validate(request: DispatchRequest, config: Config) -> list[str]:
    """Do what the Dispatcher will do (without lookups), so errors show before sending.

    Returns the templates still unfilled after substitution (``{name}`` each),
    leaving out those filled later (:data:`_FILLED_LATER`).
    """
    import re

    from zhpc.dispatch import RecipeCache, prepare, request_message
    from zhpc.errors import ZhpcError

    limits = config.limits
    size = len(request_message(request, dispatcher_queue(config)).body)
    if size > limits.max_message_bytes:
        raise ZhpcError(
            f"the request is {size} bytes; at most {limits.max_message_bytes} "
            "are allowed (limits.max_message_bytes)"
        )
    rw = prepare(
        request, RecipeCache(config.recipes.directory).get, emit=lambda _out: None, limits=limits
    )
    rw.start()
    return [
        text
        for text in rw.recipe.unfilled
        if re.split(r"[\[!:.]", text[1:], maxsplit=1)[0] not in _FILLED_LATER
    ]


def dispatcher_queue(config: Config) -> str:
    from zhpc.dispatch import DISPATCHER_QUEUE

    return config.service("dispatcher").queue or DISPATCHER_QUEUE


def _quick_transport(config: Config) -> Any:
    from zhpc.transport import get_transport

    attempts = min(config.broker.connection_attempts, GO_CONNECTION_ATTEMPTS)
    confirm = min(config.broker.confirm_timeout, GO_CONFIRM_TIMEOUT)
    return get_transport(
        config.broker.replace(connection_attempts=attempts, confirm_timeout=confirm)
    )


def send_request(request: DispatchRequest, config: Config) -> tuple[bool, str]:
    """Publish (confirmed) or, if the broker is unreachable, spool the request.

    Returns ``(True, "")`` when sent, ``(False, reason)`` when spooled.
    """
    from zhpc.dispatch import request_message
    from zhpc.errors import TransportError
    from zhpc.spool import Spool

    message = request_message(request, dispatcher_queue(config))
    transport = _quick_transport(config)
    try:
        transport.connect()
        transport.publish(message)
        return True, ""
    except TransportError as exc:
        Spool().save(
            message.destination,
            request.to_body(),
            dict(message.headers),
            label=request.guid or "",
            message_id=message.message_id,
        )
        return False, str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    finally:
        # Once the publish is confirmed the request is the broker's: a failing close
        # must not make us spool (and later send) it a second time.
        with contextlib.suppress(TransportError):
            transport.close()


def pickup(config: Config) -> int:
    """Send every spooled request; each file is removed only after its publish is confirmed."""
    from zhpc.errors import TransportError, ZhpcError
    from zhpc.message import Outgoing
    from zhpc.spool import Spool, SpooledMessage

    spool = Spool()
    waiting = spool.files()
    if not waiting:
        print(f"no spooled requests in {spool.directory}")
        return 0
    bad: list[str] = []

    def report_bad(path: Any, reason: str) -> None:
        bad.append(path.name)
        print(f"zhpc go: {path}: {reason}; renamed to {path.name}.bad", file=sys.stderr)

    sent = 0
    try:
        with _quick_transport(config) as transport:

            def send(item: SpooledMessage) -> None:
                nonlocal sent
                same_id = {"message_id": item.message_id} if item.message_id else {}
                transport.publish(
                    Outgoing.json(item.queue, item.message, headers=item.headers, **same_id)
                )
                sent += 1
                guid = (
                    item.message.get("parameters", {}).get("guid")
                    if isinstance(item.message, dict)
                    else None
                )
                print(f"sent {item.path.name}" + (f" (recipe id {guid})" if guid else ""))

            spool.send_all(send, on_bad=report_bad)
    except TransportError as exc:
        left = len(spool.files())
        raise ZhpcError(
            f"broker {config.broker.display_url()} unreachable after sending "
            f"{sent}: {exc}; {left} request(s) stay in {spool.directory}"
        ) from None
    print(f"sent {sent} spooled request(s); {len(spool.files())} left in {spool.directory}")
    return 2 if bad else 0

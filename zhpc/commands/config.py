"""``zhpc config show|check``: inspect the effective configuration."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("config", help="show or check the configuration")
    actions = parser.add_subparsers(dest="config_action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="print the effective configuration, secrets masked")
    show.set_defaults(handler=_show)
    check = actions.add_parser("check", help="validate the configuration and exit")
    check.set_defaults(handler=_check)


def _show(args: argparse.Namespace) -> int:
    import yaml

    from zhpc.config import load_config, masked_dump

    config = load_config(args.config, args.environment)
    source = str(config.source) if config.source else "none (embedded default)"
    print(f"# source: {source}")
    if config.environment:
        print(f"# environment: {config.environment}")
    print(yaml.safe_dump(masked_dump(config), sort_keys=False), end="")
    return 0


def _check(args: argparse.Namespace) -> int:
    from zhpc.config import load_config

    config = load_config(args.config, args.environment)
    source = config.source or "embedded default"
    env = f" (environment {config.environment})" if config.environment else ""
    print(
        f"{source}{env}: OK, broker {config.broker.display_url()}, "
        f"cluster backend {config.cluster.backend}"
    )
    return 0

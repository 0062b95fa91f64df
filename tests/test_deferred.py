"""zhpc.deferred: a deferred module loads on first use, and works like the real one after."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_a_deferred_module_loads_on_first_attribute_and_everyone_sees_the_real_one() -> None:
    out = _run("""
        import sys
        from zhpc import deferred
        deferred.defer("ssl")
        import ssl
        before = "_ssl" in sys.modules, deferred.is_loaded("ssl")
        context = ssl.create_default_context()
        import ssl as again
        print(before, deferred.is_loaded("ssl"), isinstance(context, again.SSLContext),
              ssl.SSLContext is sys.modules["ssl"].SSLContext)
    """)
    assert out == "(False, False) True True True"


def test_a_deferred_package_works_through_from_imports() -> None:
    out = _run("""
        from zhpc import deferred
        deferred.defer("asyncio")
        import asyncio
        from asyncio import events
        print(asyncio.run(asyncio.sleep(0, "ran")),
              asyncio.get_event_loop_policy() is events.get_event_loop_policy())
    """)
    assert out == "ran True"


def test_missing_attribute_is_an_attribute_error_and_imported_modules_are_left_alone() -> None:
    out = _run("""
        import json, sys
        from zhpc import deferred
        deferred.defer("json", "no_such_module_zhpc")
        print(sys.modules["json"] is json, "no_such_module_zhpc" in sys.modules)
        deferred.defer("ssl")
        import ssl
        try:
            ssl.no_such_name
        except AttributeError as exc:
            print("AttributeError", "no_such_name" in str(exc))
    """)
    assert out == "True False\nAttributeError True"


def test_the_rabbitmq_client_of_a_service_leaves_asyncio_unloaded() -> None:
    """What ``zhpc service`` does before it connects: pika imports asyncio, uses none of it."""
    out = _run("""
        import sys
        from zhpc import deferred
        deferred.defer("ssl", "asyncio")
        import zhpc.transport.rabbitmq
        print(deferred.is_loaded("asyncio"), deferred.is_loaded("ssl"),
              [m for m in sys.modules if m.startswith("asyncio.")])
    """)
    assert out == "False False []"

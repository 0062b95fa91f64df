"""``zhpc dlq`` on both brokers: list, show, reinject at the failed step, purge, export/import."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from quarantine_support import (
    CountingStep,
    FlakyStep,
    Setup,
    dlq,
    listed,
    run_schlockmeister,
    run_service,
    setup,
)
from service_support import Broker, publish_recipe
from testsupport import collect, wait_until

from zhpc.commands.dlq import EXIT_BROKER, parse_time
from zhpc.message import Outgoing
from zhpc.transport.base import dlq_name


def two_steps_with_a_broken_second(broker: Broker, tmp_path: Path) -> tuple[Setup, dict]:
    """Step 1 runs once and passes on; step 2 fails until fixed and is quarantined."""
    broker.delivery_limit = 1  # broker.delivery_limit: what the queues and the runner use
    world = setup(broker, tmp_path)
    first, second, out = broker.queue("one"), broker.queue("two"), broker.queue("out")
    world.watch(dlq_name(second))
    transport = broker.transport()
    transport.declare_queue(second)
    recipe = {
        "1": {"service": "counting", "queue": first, "output": 2},
        "2": {"service": "flaky", "queue": second, "output": 3},
        "3": {"service": "sink", "queue": out},
    }
    publish_recipe(transport, recipe, [{"n": 42}])
    runs, fixed = tmp_path / "runs.txt", tmp_path / "fixed"
    assert run_service(CountingStep, first, transport, runs=str(runs)).processed == 1
    assert run_service(FlakyStep, second, transport, fixed=str(fixed)).failed == 2
    run_schlockmeister(world.config, transport)
    names = {"first": first, "second": second, "out": out, "runs": runs, "fixed": fixed}
    return world, names


def test_reinject_resumes_at_the_failed_step_and_the_recipe_completes(
    broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world, names = two_steps_with_a_broken_second(broker, tmp_path)
    (entry,) = listed(world, capsys)
    assert {
        "id",
        "queue",
        "recipe_id",
        "step",
        "reason",
        "error",
        "deliveries",
        "quarantined_at",
    } <= set(entry)
    assert (entry["queue"], entry["step"], entry["reason"]) == (
        names["second"],
        2,
        "delivery_limit",
    )

    names["fixed"].touch()  # the service is fixed
    code, out, err = dlq(world, capsys, "reinject", entry["id"][:8])
    assert code == 0, err
    assert out.strip() == f"reinjected {entry['id']} to {names['second']}"
    assert listed(world, capsys) == []  # removed once the broker confirmed the copy

    transport = world.broker.transport()
    run_service(FlakyStep, names["second"], transport, fixed=str(names["fixed"]))
    (done,) = collect(transport, names["out"], 1, exact=True, listen=0.5)
    body = done.json()
    assert body["payload"] == {
        "n": 42,
        "fixed": True,
        "delivery_count": 1,
        "reinjected": 1,
        "x-death": False,
    }  # a fresh failure budget
    assert body["recipe-path"] == [1, 2] and body["environment"]["ID"] == entry["recipe_id"]
    assert names["runs"].read_text().splitlines() == ["{'n': 42}"]  # step 1 ran once
    assert transport.queue_depth(names["first"]).ready == 0


def test_reinject_from_the_start_runs_the_recipe_again_under_its_id(
    broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world, names = two_steps_with_a_broken_second(broker, tmp_path)
    (entry,) = listed(world, capsys)
    code, out, err = dlq(world, capsys, "reinject", "--from-start", entry["id"])
    assert code == 0, err
    assert out.strip() == f"reinjected {entry['id']} to {names['first']}"
    transport = world.broker.transport()
    (start,) = collect(transport, names["first"], 1, exact=True, listen=0.5)
    assert start.json()["recipe-pointer"] == 1 and start.json()["payload"] == {"n": 42}
    assert start.json()["environment"]["ID"] == entry["recipe_id"]
    assert start.headers["zhpc-reinjected"] == 1
    assert listed(world, capsys) == []


def test_reinject_with_the_broker_down_keeps_the_entry(
    broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world, _names = two_steps_with_a_broken_second(broker, tmp_path)
    (entry,) = listed(world, capsys)
    if broker.kind == "rabbitmq":
        down = world.with_broker(
            tmp_path / "down.yaml",
            url="amqp://guest:guest@127.0.0.1:1/",
            connection_attempts=1,
            retry_delay=0,
        )
    else:  # the broker's file cannot be opened: its folder is a plain file
        (tmp_path / "not-a-dir").write_text("")
        down = world.with_broker(
            tmp_path / "down.yaml", url=f"sqlite://{tmp_path / 'not-a-dir' / 'broker.sqlite'}"
        )
    code, out, err = dlq(world, capsys, "reinject", entry["id"], config=down)
    assert code == EXIT_BROKER and out == ""
    assert "did not take the message" in err and "1 entry kept" in err
    assert "guest:guest" not in err
    assert [e["id"] for e in listed(world, capsys)] == [entry["id"]]


def test_show_tells_everything_with_the_history_as_a_timeline(
    broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world, names = two_steps_with_a_broken_second(broker, tmp_path)
    (entry,) = listed(world, capsys)
    for queue, count in ((names["second"], 1), (f"dlq.{names['second']}", 1), (names["first"], 0)):
        code, out, err = dlq(world, capsys, "list", "--json", "--queue", queue)
        assert code == 0 and len(json.loads(out)) == count, (queue, err)
    code, out, err = dlq(world, capsys, "show", entry["id"], "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["body_json"]["payload"] == {"n": 42}
    # the runner recorded both failures in the message, and dead-lettered it itself
    assert shown["headers"]["zhpc-dead-letter-reason"].startswith("delivery_limit: failed 2")
    assert [f["exception"] for f in shown["headers"]["zhpc-failures"]] == ["RuntimeError"] * 2
    assert shown["timeline"][-1]["event"] == "quarantined"
    assert "dead-lettered" in [e["event"] for e in shown["timeline"]]
    code, out, err = dlq(world, capsys, "show", entry["id"])
    assert code == 0, err
    assert f"queue:         {names['second']} (taken from dlq.{names['second']})" in out
    assert "timeline:" in out and "dead-lettered" in out and '"n": 42' in out


def dead_letters(world: Setup, count: int) -> tuple[str, list[bytes]]:
    """``count`` messages moved straight to a dead-letter queue and filed."""
    queue = world.broker.queue("many")
    world.watch(dlq_name(queue))
    transport = world.broker.transport()
    transport.declare_queue(queue)
    bodies = [json.dumps({"n": n}).encode() for n in range(count - 1)] + [b"\x00binary\xff"]
    transport.publish_many([Outgoing(queue, body) for body in bodies])
    sub = transport.subscribe(
        queue, lambda m: transport.dead_letter(m, "malformed: test"), prefetch=50
    )
    wait_until(lambda: transport.poll(0.1) or transport.queue_depth(queue).ready == 0, 20)
    transport.unsubscribe(sub)
    run_schlockmeister(world.config, transport)
    return queue, bodies


def test_purge_exports_to_files_before_deleting(
    broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world = setup(broker, tmp_path)
    queue, _bodies = dead_letters(world, 3)
    entries = listed(world, capsys)
    chosen = entries[0]["id"]
    exported = tmp_path / "purged"
    code, out, err = dlq(world, capsys, "purge", chosen, "--export-dir", str(exported))
    assert code == 0, err
    (saved,) = exported.glob(f"{queue}/*/{chosen}.json")
    assert f"purged {chosen} (saved in {saved})" in out
    assert json.loads(saved.read_text())["id"] == chosen
    assert [e["id"] for e in listed(world, capsys)] == [e["id"] for e in entries[1:]]

    code, out, err = dlq(
        world, capsys, "purge", "--older-than", "0s", "--export-dir", str(exported)
    )
    assert code == 0, err
    assert "zhpc dlq: purged 2/2" in err  # progress of a bulk operation
    assert len(list(exported.glob(f"{queue}/*/*.json"))) == 3
    assert listed(world, capsys) == []


def test_export_and_import_round_trip(
    broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world = setup(broker, tmp_path)
    _queue, bodies = dead_letters(world, 4)
    before = listed(world, capsys)
    dump = tmp_path / "all.jsonl"
    code, _out, err = dlq(world, capsys, "export", "-o", str(dump))
    assert code == 0, err
    assert len(dump.read_text().splitlines()) == 4
    with world.store() as store:
        originals = {e.id: e.to_record() for e in store.entries(full=True)}
        for entry_id in originals:
            store.delete(entry_id)
    code, out, err = dlq(world, capsys, "import", str(dump))
    assert code == 0, err
    assert out.strip().startswith("imported 4 entries; 0 already in")
    assert listed(world, capsys) == before
    with world.store() as store:
        assert {e.id: e.to_record() for e in store.entries(full=True)} == originals
        assert {e.body for e in store.entries(full=True)} == set(bodies)
    code, out, _err = dlq(world, capsys, "import", str(dump))
    assert code == 0 and out.strip().startswith("imported 0 entries; 4 already in")


def test_pull_files_what_waits_when_schlockmeister_is_not_running(
    broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world = setup(broker, tmp_path)
    queue = broker.queue("pull")
    transport = broker.transport()
    transport.declare_queue(queue)
    transport.publish_many([Outgoing.json(queue, {"n": n}) for n in range(3)])
    sub = transport.subscribe(
        queue, lambda m: transport.dead_letter(m, "malformed: x"), prefetch=10
    )
    wait_until(lambda: transport.poll(0.1) or transport.queue_depth(queue).ready == 0, 20)
    transport.unsubscribe(sub)
    code, out, err = dlq(world, capsys, "pull", "--queue", queue)
    assert code == 0, err
    assert "filed 3 message(s) from 1 dead-letter queue(s)" in out
    assert sorted(e["summary"] for e in listed(world, capsys)) == ['{"n":0}', '{"n":1}', '{"n":2}']
    assert transport.queue_depth(dlq_name(queue)).ready == 0


def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world = setup(Broker("embedded", f"sqlite://{tmp_path / 'broker.sqlite'}"), tmp_path)
    (tmp_path / "bad.jsonl").write_text('{"id": "x"}\n')
    for args, problem in [
        (["show", "feedc0de"], "no quarantined message with id 'feedc0de'"),
        (["reinject", "nope"], "no quarantined message with id 'nope'"),
        (["reinject", "--to", " ", "x"], "--to: ' ' is not a queue name"),
        (["reinject", "--to", "q", "--from-start", "x"], "--to and --from-start cannot"),
        (["list", "--since", "yesterday"], "--since: 'yesterday' is not a time"),
        (["purge"], "name the entries to purge, or give --older-than T"),
        (["purge", "x", "--older-than", "1d"], "name the entries to purge"),
        (["import", str(tmp_path / "missing.jsonl")], "cannot read"),
        (["import", str(tmp_path / "bad.jsonl")], "bad.jsonl:1: not an exported entry"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ]:
        try:
            code, out, err = dlq(world, capsys, *args)
        except SystemExit as exc:  # argparse usage errors
            code, (out, err) = int(exc.code or 0), capsys.readouterr()
        assert code == 2, (args, err)
        assert len(err.strip().splitlines()) == 1 and problem in err, (args, err)
        assert "Traceback" not in err and out == ""


def test_times_are_ages_or_utc_timestamps() -> None:
    assert parse_time("90s", "--since", now=1000.0) == 910.0
    assert parse_time("2h", "--since", now=10_000.0) == 2800.0
    assert parse_time("1970-01-01T00:01:00", "--since") == 60.0
    assert parse_time("1970-01-01T01:00:00+01:00", "--since") == 0.0

"""``scaler.<service>`` settings: ``zhpc config check`` rejects impossible ones, naming the key;
the state file and its lock; deriving the management API from the broker URL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from zhpc.config import BrokerConfig, parse_config
from zhpc.errors import TransportError
from zhpc.scaler_state import LockBusy, ScalerState, ServiceState, StateStore
from zhpc.transport.management import ManagementClient


def check(tmp_path: Path, data: dict) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "zhpc.yaml"
    path.write_text(yaml.safe_dump(data))
    return subprocess.run(
        [sys.executable, "-m", "zhpc", "--config", str(path), "config", "check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("section", "key", "fragment"),
    [
        ({"min_jobs": 5, "max_jobs": 2}, "scaler.svc.max_jobs", "at least min_jobs (5)"),
        ({"time": "1:2:3:4"}, "scaler.svc.time", "bad time limit"),
        ({"time": "00:00:00"}, "scaler.svc.time", "must be positive"),
        ({"memory": "plenty"}, "scaler.svc.memory", "not a Slurm memory size"),
        ({"max_pending": 0}, "scaler.svc.max_pending", ">= 1"),
        ({"pending_timeout": 0}, "scaler.svc.pending_timeout", "> 0"),
        ({"cooldown": -1}, "scaler.svc.cooldown", ">= 0"),
        ({"target_drain_s": 0}, "scaler.svc.target_drain_s", "> 0"),
        ({"array_max": 0}, "scaler.svc.array_max", ">= 1"),
        ({"crash_limit": 0}, "scaler.svc.crash_limit", ">= 1"),
        ({"interval": 0}, "scaler.svc.interval", "> 0"),
        ({"max_job": 3}, "scaler.svc.max_job", "unknown key"),
    ],
)
def test_config_check_rejects_impossible_scaler_settings(
    tmp_path: Path, section: dict, key: str, fragment: str
) -> None:
    proc = check(tmp_path, {"scaler": {"svc": section}})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and fragment in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_check_accepts_a_full_scaler_section(tmp_path: Path) -> None:
    section = {
        "min_jobs": 1,
        "max_jobs": 8,
        "messages_per_job": 50,
        "target_drain_s": 120,
        "max_pending": 4,
        "pending_timeout": 300,
        "cooldown": 20,
        "time": "00:30:00",
        "partition": "cs05r",
        "cpus": 2,
        "memory": "4G",
        "array_max": 8,
        "interval": 30,
        "crash_limit": 5,
        "crash_window": 20,
    }
    proc = check(
        tmp_path,
        {"scaler": {"svc": section}, "broker": {"url": "amqp://u@h/", "management_url": ""}},
    )
    assert proc.returncode == 0, proc.stderr


def test_a_bad_management_url_is_rejected(tmp_path: Path) -> None:
    proc = check(tmp_path, {"broker": {"url": "amqp://h/", "management_url": "ftp://h/"}})
    assert proc.returncode == 2 and "broker.management_url" in proc.stderr


def test_management_url_is_derived_from_the_broker_url() -> None:
    client = ManagementClient.from_config(
        BrokerConfig(url="amqp://zocalo:s3cret@mq.example:5672/dls")
    )
    assert client is not None
    assert (client.base_url, client.vhost) == ("http://mq.example:15672", "dls")
    assert "s3cret" not in repr(client) and "s3cret" not in client.base_url
    tls = ManagementClient.from_config(BrokerConfig(url="amqps://mq.example/"))
    assert tls is not None and tls.base_url == "https://mq.example:15671" and tls.vhost == "/"
    assert ManagementClient.from_config(BrokerConfig(url="amqp://h/", management_url="")) is None
    assert ManagementClient.from_config(BrokerConfig(url="sqlite:////tmp/x.sqlite")) is None
    own = ManagementClient.from_config(
        BrokerConfig(
            url="amqp://a:b@h/", management_url="https://mon:pw@admin.example:8443/rabbit/"
        )
    )
    assert own is not None and own.base_url == "https://admin.example:8443/rabbit"
    assert "pw" not in repr(own)


def test_an_unreachable_management_api_is_one_clear_error_without_the_password() -> None:
    client = ManagementClient(
        "http://127.0.0.1:9/", username="guest", password="hunter2", timeout=2
    )
    with pytest.raises(TransportError, match="unreachable") as caught:
        client.queue("q")
    assert "hunter2" not in str(caught.value)


def test_masked_dump_hides_a_management_password() -> None:
    from zhpc.config import masked_dump

    config = parse_config(
        {"broker": {"url": "amqp://h/", "management_url": "http://mon:pw@h:15672/"}}
    )
    assert masked_dump(config)["broker"]["management_url"] == "http://mon:***@h:15672/"


def test_state_round_trips_and_a_damaged_file_starts_afresh(tmp_path: Path) -> None:
    store = StateStore(tmp_path, environment="test/one")
    assert store.path.name == "test_one.json"
    state = ScalerState()
    state.services["svc"] = ServiceState(
        last_submit=12.5, arrays={"7": 12.5}, seen_finished=["6_0"], failures=2
    )
    store.save(state)
    assert store.load() == state
    assert list(tmp_path.iterdir()) == [store.path]  # no temporary file left behind
    store.path.write_text("{not json")
    assert store.load() == ScalerState()
    store.path.write_text(json.dumps({"services": {"svc": {"arrays": "bad", "failures": 1}}}))
    assert store.load().services["svc"] == ServiceState(failures=1)


def test_the_lock_admits_one_holder(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with store.locked(), pytest.raises(LockBusy), StateStore(tmp_path).locked():
        pass
    with StateStore(tmp_path).locked():  # released
        pass

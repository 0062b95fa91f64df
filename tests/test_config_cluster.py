"""``broker.url`` as a list of a cluster's nodes, ``broker.hosts``, the quorum group size."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from zhpc.config import BrokerConfig, load_config
from zhpc.errors import ConfigError

NODES = [
    "amqp://zhpc:s3cret@r1:5672/site",
    "amqp://zhpc:s3cret@r2:5673/site",
    "amqp://zhpc:s3cret@r3/site",
]


def test_a_list_of_urls_is_the_first_url_and_every_node() -> None:
    config = BrokerConfig(url=NODES)
    assert config.url == NODES[0]
    assert config.hosts == ["r1:5672", "r2:5673", "r3"]
    assert config.connection_urls() == NODES
    assert config.display_urls() == [u.replace("s3cret", "***") for u in NODES]
    assert config.scheme == "amqp"


def test_hosts_share_the_urls_credentials_and_vhost() -> None:
    config = BrokerConfig(
        url="amqps://zhpc@r1:5671/v", hosts=["r1:5671", "[::1]:5671"], password_file=None
    )
    assert config.connection_urls() == ["amqps://zhpc@r1:5671/v", "amqps://zhpc@[::1]:5671/v"]


def test_one_url_is_one_node() -> None:
    config = BrokerConfig(url=NODES[0])
    assert config.connection_urls() == [NODES[0]]
    assert config.quorum_initial_group_size() is None  # the broker's own default


@pytest.mark.parametrize(("count", "size"), [(2, 2), (3, 3), (5, 3)])
def test_the_group_size_is_the_nodes_listed_up_to_three(count: int, size: int) -> None:
    hosts = [f"r{n}:5672" for n in range(count)]
    assert BrokerConfig(url=NODES[0], hosts=hosts).quorum_initial_group_size() == size
    assert (
        BrokerConfig(url=NODES[0], hosts=hosts, quorum_group_size=5).quorum_initial_group_size()
        == 5
    )


@pytest.mark.parametrize(
    "urls",
    [
        [],
        ["amqp://zhpc:s3cret@r1/site", "amqp://other:s3cret@r2/site"],
        ["amqp://zhpc:s3cret@r1/site", "amqp://zhpc:s3cret@r2/elsewhere"],
        ["amqp://zhpc:s3cret@r1/site", "amqps://zhpc:s3cret@r2/site"],
        ["amqp://zhpc:s3cret@r1/site", 5],
    ],
)
def test_a_list_that_is_not_one_cluster_is_refused(urls: list, tmp_path: Path) -> None:
    path = tmp_path / "zhpc.yaml"
    path.write_text(yaml.safe_dump({"broker": {"url": urls}}))
    with pytest.raises(ConfigError, match="broker") as info:
        load_config(path)
    assert "s3cret" not in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("host", ["", "r1/x", "u@r1", "r1:0", "r1:99999", "r1 :5672"])
def test_bad_hosts_are_refused(host: str) -> None:
    with pytest.raises(ValueError):
        BrokerConfig(url=NODES[0], hosts=[host])


def test_a_list_and_hosts_together_are_refused() -> None:
    with pytest.raises(ValueError, match="not both"):
        BrokerConfig(url=NODES, hosts=["r1"])

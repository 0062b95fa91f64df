"""Configuration loading: search order, environments, secrets and every error path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from zhpc.cli import main
from zhpc.config import load_config
from zhpc.errors import ConfigError


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No user configuration leaks in: HOME, ZHPC_* and the working directory are ours."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ZHPC_HOME", str(tmp_path / "state"))
    for name in ("ZHPC_CONFIG", "ZHPC_ENV"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def test_no_file_gives_embedded_default(tmp_path: Path) -> None:
    config = load_config()
    assert config.source is None
    assert config.broker.scheme == "sqlite"
    assert config.broker.sqlite_path() == tmp_path / "state" / "broker.sqlite"
    assert config.cluster.backend == "local"


def test_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = write(tmp_path / "home/.config/zhpc/config.yaml", "cluster: {backend: slurm}\n")
    assert load_config().source == home
    local = write(tmp_path / "zhpc.yaml", "cluster: {backend: ssh}\n")
    assert load_config().source == local
    env = write(tmp_path / "env.yaml", "cluster: {partition: env}\n")
    monkeypatch.setenv("ZHPC_CONFIG", str(env))
    assert load_config().cluster.partition == "env"
    explicit = write(tmp_path / "explicit.yaml", "cluster: {partition: explicit}\n")
    assert load_config(explicit).cluster.partition == "explicit"


def test_environment_overlays_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(
        tmp_path / "c.yaml",
        """
broker: {url: "amqp://zhpc@rabbit.example:5672/", delivery_limit: 3}
cluster: {backend: slurm, partition: main, extra_sbatch_args: ["--qos=normal"]}
services:
  dispatcher: {prefetch: 10}
environments:
  test:
    broker: {url: "amqp://guest@127.0.0.1/"}
    services:
      dispatcher: {idle_timeout: 60}
""",
    )
    base = load_config(path)
    assert base.broker.url.startswith("amqp://zhpc@rabbit")
    assert base.service("dispatcher").idle_timeout is None
    test = load_config(path, "test")
    assert test.environment == "test"
    assert test.broker.url == "amqp://guest@127.0.0.1/"
    assert test.broker.delivery_limit == 3  # kept from the base
    assert test.cluster.partition == "main"
    assert test.service("dispatcher").prefetch == 10
    assert test.service("dispatcher").idle_timeout == 60
    monkeypatch.setenv("ZHPC_ENV", "test")
    assert load_config(path).environment == "test"


def test_password_file_is_used_and_masked(tmp_path: Path) -> None:
    secret = write(tmp_path / "pw", "s3cr#t/pass\n", mode=0o600)
    text = f"broker: {{url: 'amqp://zhpc@127.0.0.1:5672/', password_file: {secret}}}\n"
    path = write(tmp_path / "c.yaml", text)
    config = load_config(path)
    assert config.broker.password() == "s3cr#t/pass"
    assert config.broker.connection_url() == "amqp://zhpc:s3cr%23t%2Fpass@127.0.0.1:5672/"
    assert "s3cr" not in config.broker.display_url()


def test_config_show_never_prints_a_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "c.yaml", "broker: {url: 'amqp://zhpc:hunter2@127.0.0.1/'}\n")
    assert main(["--config", str(path), "config", "show"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out
    assert "amqp://zhpc:***@127.0.0.1/" in out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("broker: [unclosed\n", "invalid YAML (line 2"),
        ("broker: {urll: x}\n", "broker.urll: unknown key"),
        ("broker: {delivery_limit: many}\n", "broker.delivery_limit: must be"),
        (
            "cluster: {backend: pbs}\n",
            "cluster.backend: must be 'drmaa', 'local', 'slurm', 'slurmrestd' or 'ssh'",
        ),
        ("broker: {url: 'http://x'}\n", "broker.url: must start with amqp://"),
        ("services: {dispatcher: {prefetch: 0}}\n", "services.dispatcher.prefetch:"),
        ("- just\n- a list\n", "the top level must be a mapping"),
    ],
)
def test_bad_files_give_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    path = write(tmp_path / "bad.yaml", text)
    assert main(["--config", str(path), "config", "check"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"zhpc: error: {path}: ")
    assert expected in err


def test_world_readable_password_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = write(tmp_path / "pw", "hunter2\n", mode=0o644)
    path = write(tmp_path / "c.yaml", f"broker: {{password_file: {secret}}}\n")
    assert main(["--config", str(path), "config", "check"]) == 2
    err = capsys.readouterr().err
    assert "mode 0644" in err and "chmod 600" in err
    assert "hunter2" not in err


def test_missing_file_and_unknown_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(tmp_path / "nope.yaml"), "config", "check"]) == 2
    assert "nope.yaml does not exist" in capsys.readouterr().err
    path = write(tmp_path / "c.yaml", "environments: {live: {}}\n")
    assert main(["--config", str(path), "-e", "tset", "config", "check"]) == 2
    assert "environment 'tset' is not defined (known: live)" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="no configuration file"):
        load_config(environment="live")


def test_console_script_reports_without_traceback(tmp_path: Path) -> None:
    """The installed entry point, run as a user would: one line on stderr, exit 2."""
    path = write(tmp_path / "bad.yaml", "logging: {level: LOUD}\n")
    result = subprocess.run(
        [sys.executable, "-m", "zhpc.cli", "--config", str(path), "config", "check"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"zhpc: error: {path}: logging.level: must be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'"
    ]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///var/lib/zhpc/b.sqlite", "/var/lib/zhpc/b.sqlite"),
        ("sqlite:////var/lib/zhpc/b.sqlite", "/var/lib/zhpc/b.sqlite"),
        ("sqlite://state/b.sqlite", "state/b.sqlite"),
    ],
)
def test_sqlite_urls(url: str, expected: str) -> None:
    from zhpc.config import BrokerConfig

    assert str(BrokerConfig(url=url).sqlite_path()) == expected


BIG = "1" * 5000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # issue 12.11: a raw '#', '/' or '?' in the password ends the host part; never connects.
        (
            "broker: {url: 'amqp://zhpc:hun#ter2@rabbit:5672/'}",
            "broker.url: does not parse as user:password@host:port/vhost; percent-encode",
        ),
        ("broker: {url: 'amqp://zhpc:hun/ter2@rabbit:5672/'}", "broker.url: does not"),
        ("broker: {url: 'amqp://zhpc:hun?ter2@rabbit:5672/'}", "broker.url: does not"),
        ("broker: {url: 'amqp://zhpc:12/hunter2@rabbit:5672/'}", "broker.url: does"),
        ("broker: {url: 'amqp://[::1/'}", "broker.url: does not parse as a URL"),
        ("broker: {url: 'sqlite:///tmp/b.sqlite#x'}", "broker.url: a sqlite:/// path"),
        # issue 12.14: port out of range, non-finite numbers, 5000-digit integers.
        (
            "broker: {url: 'amqp://zhpc:hunter2@rabbit:99999/'}",
            "broker.url: the port must be a number from 1 to 65535",
        ),
        ("services: {x: {max_runtime: .inf}}", "services.x.max_runtime: must be a finite"),
        ("broker: {retry_delay: 1e400}", "broker.retry_delay: must be a finite number"),
        (
            f"broker: {{delivery_limit: {BIG}}}",
            "invalid YAML (line 1, column 26): integer with 5000 digits is too large",
        ),
        (f"services: {{x: {{parameters: {{n: {BIG}}}}}}}", "integer with 5000 digits"),
        (
            "broker: {delivery_limit: 99999999999999999999}",
            "broker.delivery_limit: integer out of range",
        ),
        (
            "services: {x: {parameters: {a: [1, {b: .nan}]}}}",
            "services.x.parameters: a[1].b: must be a finite number",
        ),
        # issue 12.15: what used to pass `config check` and fail in a job later.
        (
            "cluster: {default_time: soon}",
            "cluster.default_time: bad time limit 'soon'",
        ),
        ("cluster: {default_time: '\u0661:00:00'}", "cluster.default_time: bad time"),
        ("scaler: {x: {time: '-5'}}", "scaler.x.time: bad time limit '-5'"),
        (
            "scaler: {x: {min_jobs: 5, max_jobs: 2}}",
            "scaler.x.max_jobs: must be at least min_jobs (5), not 2",
        ),
        (
            "recipes: {directory: /no/such/recipes}",
            "recipes.directory: /no/such/recipes does not exist",
        ),
        (
            "recipes: {directory: /etc/hostname}",
            "recipes.directory: /etc/hostname is not a directory",
        ),
        (
            "staging: {allowed_roots: [data]}",
            "staging.allowed_roots: entry 1 ('data') must be an absolute path",
        ),
        (
            "staging: {allowed_roots: [/dls, '']}",
            "staging.allowed_roots: entry 2 is empty",
        ),
        ("staging: {allowed_roots: ['/']}", "would allow every file on the machine"),
    ],
)
def test_configs_that_would_fail_later_are_refused_by_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    path = write(tmp_path / "bad.yaml", text + "\n")
    for action in ("check", "show"):
        assert main(["--config", str(path), "config", action]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.count("\n") == 1, captured.err
        assert captured.err.startswith(f"zhpc: error: {path}: "), captured.err
        assert expected in captured.err
        assert "hunter2" not in captured.err and "internal error" not in captured.err


def test_good_values_next_to_the_new_checks_still_pass(tmp_path: Path) -> None:
    (tmp_path / "recipes").mkdir()
    path = write(
        tmp_path / "c.yaml",
        f"""
broker: {{url: 'amqp://zhpc:hun%23ter%2F2@[::1]:5672/%2F', delivery_limit: 9223372036854775807}}
cluster: {{default_time: "2-00:00:00"}}
recipes: {{directory: {tmp_path / "recipes"}}}
staging: {{allowed_roots: [/dls, "~/data"]}}
scaler: {{double: {{time: "30", min_jobs: 2, max_jobs: 2}}}}
services: {{x: {{parameters: {{ratio: 0.5, id: -9223372036854775808}}}}}}
""",
    )
    config = load_config(path)
    assert config.broker.password() == "hun#ter/2"
    assert config.broker.connection_url() == "amqp://zhpc:hun%23ter%2F2@[::1]:5672/%2F"
    assert config.recipes.directory == tmp_path / "recipes"
    assert config.staging.allowed_roots == [Path("/dls"), Path("~/data")]
    assert "hun" not in repr(config.broker)


def test_config_show_masks_secret_parameters_and_urls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path / "c.yaml",
        """
broker: {url: 'amqp://zhpc:hunter1@rabbit:5672/'}
services:
  ispyb:
    parameters:
      ispyb_password: hunter2
      db_url: "mysql://ispyb:hunter3@db.example/ispyb"
      raw_url: "mysql://ispyb:hun#ter/4@db.example/ispyb"
      API-Token: hunter5
      credentials: {user: me, secret: hunter6}
      routing_key: visible-rk
      key_file: /etc/zhpc/visible.key
""",
    )
    assert main(["--config", str(path), "config", "show"]) == 0
    out = capsys.readouterr().out
    assert "hunter" not in out, out
    for shown in (
        "amqp://zhpc:***@rabbit:5672/",
        "ispyb_password: '***'",
        "db_url: mysql://ispyb:***@db.example/ispyb",
        "raw_url: mysql://ispyb:***@db.example/ispyb",
        "API-Token: '***'",
        "credentials: '***'",
        "routing_key: visible-rk",
        "key_file: /etc/zhpc/visible.key",
    ):
        assert shown in out, (shown, out)
    assert main(["--config", str(path), "config", "check"]) == 0
    assert "hunter" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("amqp://u:pw@h:5672/v", "amqp://u:***@h:5672/v"),
        ("amqp://u:p#ss/w?rd@h:5672/", "amqp://u:***@h:5672/"),
        ("mysql://u:p@ss@db/x", "mysql://u:***@db/x"),
        ("amqp://u@h/", "amqp://u@h/"),
        ("amqp://h:99999/", "amqp://h:99999/"),
        ("https://example.org/a:b@c", "https://example.org/a:b@c"),
    ],
)
def test_mask_url_hides_passwords_the_parser_cannot_see(url: str, masked: str) -> None:
    from zhpc.config import mask_url  # also what the RabbitMQ transport logs with

    assert mask_url(url) == masked


def test_a_sections_repr_hides_every_url_password() -> None:
    """Logs and tracebacks may show a section: its URLs never carry the password."""
    from zhpc.config import parse_config

    config = parse_config(
        {
            "broker": {"url": "amqp://zhpc:hunter2@rabbit/"},
            "quarantine": {"url": "postgresql://zhpc:hunter3@db/q"},
            "events": {"url": "postgresql://zhpc:hunter4@db/e"},
        }
    )
    shown = repr(config)
    assert "amqp://zhpc:***@rabbit/" in shown
    assert "hunter" not in shown


def test_a_changed_copy_is_checked_like_the_file() -> None:
    from zhpc.config import ServiceConfig

    service = ServiceConfig().replace(prefetch=7)
    assert service.prefetch == 7
    with pytest.raises(ConfigError, match=r"^prefetch: must be an integer >= 1$"):
        ServiceConfig().replace(prefetch=0)


@pytest.mark.parametrize("key", ["source", "environment"])
def test_what_the_loader_sets_is_not_a_key_of_the_file(tmp_path: Path, key: str) -> None:
    path = write(tmp_path / "c.yaml", f"{key}: /etc\n")
    with pytest.raises(ConfigError, match=rf"{key}: unknown key"):
        load_config(path)

"""Slurm on a remote login node, through SSH (paramiko).

The same sbatch/squeue/scancel calls and parsing as :mod:`zhpc.cluster.slurm`,
only run by :class:`SSHRunner`: each argument vector is quoted with
``shlex.join`` for the remote shell. Key authentication only; the host key
is checked against ``known_hosts`` unless checking is explicitly turned off.
A job submitted this way runs under Slurm, so inside it the Slurm backend's
job environment applies (inherited from :class:`SlurmCluster`).
"""

from __future__ import annotations

import logging
import shlex
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from zhpc.cluster.runner import CommandResult, CommandTimeout
from zhpc.cluster.slurm import SlurmCluster
from zhpc.errors import ClusterError

if TYPE_CHECKING:
    import paramiko

    from zhpc.config import ClusterConfig, SSHConfig

log = logging.getLogger(__name__)


def _paramiko():  # type: ignore[no-untyped-def]
    try:
        import paramiko
    except ImportError:
        raise ClusterError(
            "the ssh cluster backend needs paramiko: pip install 'zhpc[ssh]'"
        ) from None
    return paramiko


class SSHRunner:
    """Runs scheduler commands on ``config.host`` over one reused SSH connection."""

    def __init__(self, config: SSHConfig) -> None:
        self.config = config
        self._client: paramiko.SSHClient | None = None
        self._lock = threading.Lock()

    def describe(self) -> str:
        user = f"{self.config.user}@" if self.config.user else ""
        return f"{user}{self.config.host}:{self.config.port}"

    def _connect(self) -> paramiko.SSHClient:
        paramiko = _paramiko()
        cfg = self.config
        client = paramiko.SSHClient()
        if cfg.known_hosts is not None:
            known_hosts = cfg.known_hosts.expanduser()
            if not known_hosts.is_file() and cfg.strict_host_key_checking:
                raise ClusterError(f"cluster.ssh.known_hosts: {known_hosts} does not exist")
            if known_hosts.is_file():
                client.load_host_keys(str(known_hosts))
        else:
            client.load_system_host_keys()
        if cfg.strict_host_key_checking:
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        else:
            client.set_missing_host_key_policy(paramiko.WarningPolicy())
        key_file = str(cfg.key_file.expanduser()) if cfg.key_file else None
        try:
            client.connect(
                cfg.host,
                port=cfg.port,
                username=cfg.user,
                key_filename=key_file,
                look_for_keys=key_file is None,
                allow_agent=key_file is None,
                timeout=cfg.timeout,
                banner_timeout=cfg.timeout,
                auth_timeout=cfg.timeout,
            )
        except paramiko.BadHostKeyException:
            client.close()
            raise ClusterError(
                f"ssh {self.describe()}: host key does not match known_hosts (possible attack)"
            ) from None
        except paramiko.SSHException as exc:
            client.close()
            # RejectPolicy, authentication and protocol failures all land here.
            raise ClusterError(f"ssh {self.describe()}: {exc}") from None
        except OSError as exc:
            client.close()
            raise ClusterError(f"ssh {self.describe()}: cannot connect: {exc}") from None
        return client

    def _transport_ok(self) -> bool:
        transport = self._client.get_transport() if self._client else None
        return bool(transport and transport.is_active())

    def run(self, argv: Sequence[str], *, input: str | None, timeout: float) -> CommandResult:
        paramiko = _paramiko()
        command = shlex.join(argv)
        with self._lock:
            if not self._transport_ok():
                self.close()
                self._client = self._connect()
            assert self._client is not None
            try:
                stdin, stdout, stderr = self._client.exec_command(command, timeout=timeout)
                if input is not None:
                    stdin.write(input)
                stdin.channel.shutdown_write()
                out = stdout.read().decode("utf-8", "replace")
                err = stderr.read().decode("utf-8", "replace")
                status = stdout.channel.recv_exit_status()
            except TimeoutError:
                self.close()  # the channel is in an unknown state
                raise CommandTimeout(
                    f"{argv[0]} on {self.describe()} did not answer within {timeout:g} s"
                ) from None
            except (paramiko.SSHException, OSError) as exc:
                self.close()
                raise ClusterError(f"ssh {self.describe()}: {argv[0]} failed: {exc}") from None
        if status == 127:
            raise ClusterError(f"{argv[0]} not found on {self.describe()}")
        return CommandResult(status, out, err)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class SSHCluster(SlurmCluster):
    """Slurm on a login node reached by SSH."""

    name = "ssh"

    def __init__(self, config: SSHConfig, **kwargs: object) -> None:
        super().__init__(SSHRunner(config), **kwargs)  # type: ignore[arg-type]

    @classmethod
    def from_config(cls, config: ClusterConfig) -> SSHCluster:
        return cls(config.ssh, **cls._options(config))

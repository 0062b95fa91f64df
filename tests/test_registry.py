"""Backends found by registry: transports by URL scheme, clusters by name, lazily imported."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from zhpc.cluster import Cluster, backend_class, backend_names, get_cluster
from zhpc.config import BrokerConfig, ClusterConfig, parse_config
from zhpc.jobenv import JobEnvironment
from zhpc.transport import Transport, get_transport, transport_class, url_schemes


def run_python(code: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, check=False, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_shipped_backends_are_registered() -> None:
    assert url_schemes() == ["amqp", "amqps", "sqlite", "stomp", "stomp+ssl"]
    assert backend_names() == ["drmaa", "local", "slurm", "slurmrestd", "ssh"]
    for scheme in url_schemes():
        assert issubclass(transport_class(scheme), Transport)
    for name in backend_names():
        cls = backend_class(name)
        assert issubclass(cls, Cluster) and cls.name == name


def test_each_job_marker_is_what_its_backend_reads() -> None:
    from zhpc import plugins

    markers = plugins.names(plugins.JOB_ENVIRONMENTS)
    assert markers == ["SGE_TASK_ID", "SLURM_JOB_ID", "ZHPC_JOB_ID"]
    # Grid Engine sets SGE_TASK_ID ("undefined" outside an array) beside the generic JOB_ID.
    extra = {"SGE_TASK_ID": {"JOB_ID": "12", "SGE_TASK_ID": "undefined"}}
    registered = {backend_class(name) for name in backend_names()}
    for variable in markers:
        cls = plugins.load(plugins.JOB_ENVIRONMENTS, variable)
        assert cls in registered
        assert cls.job_identity(extra.get(variable, {variable: "12"})).job_id == "12"
        assert cls.job_identity({}) is None


def test_outside_a_job_no_backend_is_imported() -> None:
    out = run_python(
        """
        import sys
        from zhpc.jobenv import JobEnvironment
        job = JobEnvironment.from_environ({"PATH": "/bin"})
        print(job.in_job, job.end_time(), sorted(m for m in sys.modules
                                                 if m.startswith("zhpc.cluster")))
        """
    )
    assert out == "False None []"


def test_get_cluster_builds_each_backend_from_its_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_JWT", "eyJ.test.token")  # slurmrestd reads its token at start
    for name in backend_names():
        config = ClusterConfig(backend=name, partition="p", workdir=tmp_path)
        with get_cluster(config) as cluster:
            assert type(cluster) is backend_class(name)
    assert get_cluster(ClusterConfig(backend="slurm", partition="p")).partition == "p"
    assert get_cluster(ClusterConfig(workdir=tmp_path)).root == tmp_path / "local"


def test_importing_zhpc_and_validating_a_config_import_no_backend() -> None:
    out = run_python(
        """
        import sys
        import zhpc, zhpc.cluster, zhpc.cluster.arrays, zhpc.jobenv, zhpc.transport
        from zhpc.config import parse_config
        parse_config({"broker": {"url": "amqps://h/"}, "cluster": {"backend": "ssh"}})
        loaded = {"pika", "paramiko", "zhpc.transport.rabbitmq", "zhpc.cluster.ssh",
                  "zhpc.cluster.slurm", "zhpc.transport.embedded"} & set(sys.modules)
        print(sorted(loaded))
        """
    )
    assert out == "[]"


def test_the_embedded_transport_comes_without_pika(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'b.sqlite'}"
    out = run_python(
        f"""
        import sys
        from zhpc.config import BrokerConfig
        from zhpc.transport import get_transport
        transport = get_transport(BrokerConfig(url={url!r}))
        print(type(transport).__name__, "pika" in sys.modules)
        """
    )
    assert out == "EmbeddedTransport False"
    assert type(get_transport(BrokerConfig(url="amqp://h/"))).__name__ == "RabbitMQTransport"


def test_slurm_is_believed_over_a_local_job_inherited_environment() -> None:
    env = JobEnvironment.from_environ({"SLURM_JOB_ID": "42", "ZHPC_JOB_ID": "7"})
    assert (env.scheduler, env.job_id, env.slurm_job_id) == ("slurm", "42", "42")


def test_unknown_names_are_refused_with_what_is_installed() -> None:
    from zhpc.errors import ConfigError, ZhpcError

    available = r"\(available: drmaa, local, slurm, slurmrestd, ssh\)"
    with pytest.raises(ZhpcError, match=r"no cluster named 'pbs' " + available):
        backend_class("pbs")
    with pytest.raises(ZhpcError, match=r"no transport named 'http' \(available: amqp, amqps"):
        transport_class("http")
    with pytest.raises(ConfigError, match=r"cluster\.backend: must be a string, not a list"):
        parse_config({"cluster": {"backend": ["local"]}})


def test_a_site_backend_is_one_entry_point_and_a_broken_one_harms_no_job(
    tmp_path: Path,
) -> None:
    """A backend installed by another package is accepted by the configuration and asked
    who a job is; one that cannot be imported only fails when it is chosen."""
    (tmp_path / "site_backends.py").write_text(
        textwrap.dedent(
            """
            from zhpc.cluster.base import Cluster, JobIdentity

            class PBS(Cluster):
                name = "pbs"
                @classmethod
                def from_config(cls, config):
                    return cls()
                @classmethod
                def job_identity(cls, environ):
                    job = environ.get("PBS_JOBID")
                    return JobIdentity(scheduler="pbs", job_id=job) if job else None
                @classmethod
                def job_end_time(cls, job, environ):
                    return 1234.5
                def submit(self, spec): raise NotImplementedError
                def jobs(self, name_prefix="zhpc"): return []
                def cancel(self, job_ids): pass
            """
        )
    )
    dist = tmp_path / "site_backends-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: site-backends\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(
        "[zhpc.clusters]\npbs = site_backends:PBS\nbroken = site_backends:Missing\n"
        "[zhpc.job_environments]\nPBS_JOBID = site_backends:PBS\n"
        "BROKEN_JOB_ID = site_backends:Missing\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]))
    out = run_python(
        """
        from zhpc.cluster import get_cluster
        from zhpc.config import parse_config
        from zhpc.errors import ZhpcError
        from zhpc.jobenv import JobEnvironment
        config = parse_config({"cluster": {"backend": "pbs"}})
        print(type(get_cluster(config.cluster)).__name__)
        job = JobEnvironment.from_environ({"PBS_JOBID": "9.server", "BROKEN_JOB_ID": "1"})
        print(job.scheduler, job.job_id, job.end_time())
        try:
            get_cluster(parse_config({"cluster": {"backend": "broken"}}).cluster)
        except ZhpcError as exc:
            print(exc)
        """,
        env=env,
    )
    lines = out.splitlines()
    assert lines[:2] == ["PBS", "pbs 9.server 1234.5"]
    assert lines[2].startswith("cannot load 'broken' from site_backends:Missing")

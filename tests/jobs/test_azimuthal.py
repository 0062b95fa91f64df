"""The example wrapper plug-in: pyFAI integrates a synthetic ring image made here."""

from __future__ import annotations

import json
from pathlib import Path

from jobs_support import write_config, zhpc
from testsupport import collect, unavailable

from zhpc.jobfiles import write_recipewrapper
from zhpc.recipe import RecipeWrapper, load_recipe
from zhpc.transport.embedded import EmbeddedTransport

PIXEL = 1e-4  # 100 um pixels
DISTANCE = 0.1  # 10 cm
CENTRE = 128.5  # pixels
GEOMETRY = {
    "dist": DISTANCE,
    "poni1": CENTRE * PIXEL,
    "poni2": CENTRE * PIXEL,
    "pixel1": PIXEL,
    "pixel2": PIXEL,
    "wavelength": 1e-10,
}


def ring_image(path: Path, two_theta: float) -> None:
    """An EDF image of one powder ring at ``two_theta`` degrees on a flat background."""
    try:
        import fabio
        import numpy
    except ImportError:
        unavailable("the pyfai extra is not installed", hint="pip install -e '.[pyfai]'")
    y, x = numpy.indices((256, 256))
    radius = numpy.hypot(x + 0.5 - CENTRE, y + 0.5 - CENTRE) * PIXEL
    angle = numpy.degrees(numpy.arctan(radius / DISTANCE))
    data = 10 + 1000 * numpy.exp(-(((angle - two_theta) / 0.1) ** 2))
    fabio.edfimage.EdfImage(data=data.astype("float32")).write(str(path))


def data_and_config(tmp_path: Path, image: str, two_theta: float) -> tuple[Path, Path]:
    """``tmp_path/data`` holding one ring image, and a configuration that may stage from it."""
    data = tmp_path / "data"
    data.mkdir()
    ring_image(data / image, two_theta)
    config = write_config(
        tmp_path / "zhpc.yaml",
        {
            "broker": {"url": f"sqlite:///{tmp_path / 'broker.sqlite'}"},
            "staging": {"allowed_roots": [str(data)]},
        },
    )
    return data, config


def test_the_shipped_recipe_integrates_an_image_and_reports_the_ring(tmp_path: Path) -> None:
    data, config = data_and_config(tmp_path, "ring_0001.edf", two_theta=5.0)
    recipe = load_recipe("azimuthal-integration")
    rw = RecipeWrapper.from_recipe(
        recipe,
        {
            "image": str(data / "ring_0001.edf"),
            "results_directory": str(data / "processed"),
            "geometry": GEOMETRY,
        },
    )
    (start,) = rw.start()
    job = tmp_path / "job"
    job.mkdir()
    body = json.loads(start.body)
    write_recipewrapper(job / "recipewrapper.json", body, start.message_id)
    wrapper = body["recipe"]["1"]["cluster"]["wrapper"]
    proc = zhpc(
        "--config",
        str(config),
        "wrap",
        "--wrap",
        wrapper,
        "--recipewrapper",
        str(job / "recipewrapper.json"),
        "--workdir",
        str(job),
    )
    assert proc.returncode == 0, proc.stderr
    with EmbeddedTransport(tmp_path / "broker.sqlite") as broker:
        (message,) = collect(broker, "jsonlines", 1, timeout=5)
        assert collect(broker, "notify.failure", 1, timeout=0.2, check=False) == []
    payload = message.json()["payload"]
    results = payload["results"]
    assert results["unit"] == "2th_deg" and results["points"] == 1000
    assert abs(results["peak_position"] - 5.0) < 0.05
    assert results["peak_intensity"] > 500
    assert payload["files"] == [str(data / "processed" / "ring_0001.xy")]
    columns = [
        line.split()
        for line in (data / "processed" / "ring_0001.xy").read_text().splitlines()
        if not line.startswith("#")
    ]
    assert len(columns) == 1000 and all(len(row) == 2 for row in columns)


def test_missing_geometry_is_a_failure_with_a_clear_reason(tmp_path: Path) -> None:
    data, config = data_and_config(tmp_path, "ring.edf", two_theta=3.0)
    rw = RecipeWrapper.from_recipe(
        load_recipe("azimuthal-integration"),
        {"image": str(data / "ring.edf"), "results_directory": str(data / "out")},
    )
    (start,) = rw.start()
    write_recipewrapper(tmp_path / "rw.json", json.loads(start.body), start.message_id)
    proc = zhpc(
        "--config",
        str(config),
        "wrap",
        "--wrap",
        "azimuthal",
        "--recipewrapper",
        str(tmp_path / "rw.json"),
        "--workdir",
        str(tmp_path),
    )
    assert proc.returncode == 2
    with EmbeddedTransport(tmp_path / "broker.sqlite") as broker:
        (message,) = collect(broker, "notify.failure", 1, timeout=5)
    assert "give either 'poni'" in message.json()["payload"]["error"]

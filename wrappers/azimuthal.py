"""Azimuthal integration of one detector image with pyFAI: a beamline's per-image analysis.

Needs the ``pyfai`` extra (``pip install 'zhpc[pyfai]'``). pyFAI runs inside
the wrap process (it is a library; the integration of one image takes well
under a second), so a SIGTERM from the scheduler is noticed once it returns.

Step parameters (``{payload[...]}`` is substituted by zhpc wrap first):

``image``
    the image (any format fabio reads: EDF, CBF, TIFF, ...), staged in from
    the allowed roots
``poni``
    a PONI geometry file, staged in the same way; or instead ``geometry``:
    ``{dist, poni1, poni2, pixel1, pixel2, wavelength}`` in metres (plus
    optional ``rot1``..``rot3`` in radians)
``npt``, ``unit``
    number of output points (default 1000) and the radial unit
    (``2th_deg`` (default), ``q_nm^-1``, ``r_mm``)

The result is ``<image stem>.xy`` (pyFAI's two-column text with its header),
staged out like ``cluster.stage_out``; the report gives the strongest peak.
"""

from __future__ import annotations

import math
from typing import Any

from zhpc.errors import ZhpcError
from zhpc.recipe import RecipeWrapper
from zhpc.wrapper import Wrapper

_GEOMETRY = ("dist", "poni1", "poni2", "pixel1", "pixel2", "wavelength")
_OPTIONAL = ("rot1", "rot2", "rot3")
UNITS = ("2th_deg", "2th_rad", "q_nm^-1", "q_A^-1", "r_mm")


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ZhpcError(f"azimuthal: {what} must be a finite number, not {value!r:.40}")
    return float(value)


class AzimuthalIntegration(Wrapper):
    """Integrates one detector image to a 1-D pattern with pyFAI."""

    def run(self, rw: RecipeWrapper | None) -> bool:
        parameters = self.parameters
        image = parameters.get("image")
        if not isinstance(image, str) or not image:
            raise ZhpcError("azimuthal: the step parameter 'image' must name the image file")
        npt = parameters.get("npt", 1000)
        if isinstance(npt, bool) or not isinstance(npt, int) or not 2 <= npt <= 100_000:
            raise ZhpcError("azimuthal: npt must be a whole number from 2 to 100000")
        unit = parameters.get("unit", "2th_deg")
        if unit not in UNITS:
            raise ZhpcError(f"azimuthal: unit must be one of {', '.join(UNITS)}")
        try:
            import fabio
            import numpy
            import pyFAI
        except ImportError as exc:
            raise ZhpcError(
                f"the azimuthal wrapper needs pyFAI ({exc.name} is missing): "
                "pip install 'zhpc[pyfai]'"
            ) from None
        integrator = self._integrator(pyFAI, parameters)
        local = self.stage_in(image)
        try:
            data = fabio.open(str(local)).data
        except Exception as exc:  # fabio raises many kinds for unreadable files
            raise ZhpcError(f"azimuthal: cannot read image {image}: {exc}") from None
        output = self.workdir / f"{local.stem}.xy"
        result = integrator.integrate1d(data, npt, unit=unit, filename=str(output))
        intensity = numpy.asarray(result.intensity, dtype=float)
        radial = numpy.asarray(result.radial, dtype=float)
        finite = numpy.isfinite(intensity)
        self.results.append(output)
        if not finite.any():
            self.report = {"image": image, "error": "no finite intensity"}
            return False
        peak = int(numpy.nanargmax(numpy.where(finite, intensity, numpy.nan)))
        self.report = {
            "image": image,
            "pattern": output.name,
            "unit": unit,
            "points": int(npt),
            "peak_position": round(float(radial[peak]), 6),
            "peak_intensity": round(float(intensity[peak]), 6),
            "mean_intensity": round(float(numpy.nanmean(intensity[finite])), 6),
            "pyfai": pyFAI.version,
        }
        return True

    def _integrator(self, pyFAI: Any, parameters: dict[str, Any]) -> Any:
        if parameters.get("poni") is not None:
            if not isinstance(parameters["poni"], str):
                raise ZhpcError("azimuthal: poni must be the path of a PONI file")
            try:
                return pyFAI.load(str(self.stage_in(parameters["poni"])))
            except ZhpcError:
                raise
            except Exception as exc:
                raise ZhpcError(f"azimuthal: cannot read PONI file: {exc}") from None
        geometry = parameters.get("geometry")
        if not isinstance(geometry, dict):
            raise ZhpcError("azimuthal: give either 'poni' (a file) or 'geometry' (a mapping)")
        missing = [key for key in _GEOMETRY if key not in geometry]
        if missing:
            raise ZhpcError(f"azimuthal: geometry lacks {', '.join(missing)}")
        unknown = sorted(set(geometry) - set(_GEOMETRY) - set(_OPTIONAL))
        if unknown:
            raise ZhpcError(f"azimuthal: unknown geometry key(s) {', '.join(unknown)}")
        values = {key: _number(value, f"geometry.{key}") for key, value in geometry.items()}
        from pyFAI.integrator.azimuthal import AzimuthalIntegrator

        return AzimuthalIntegrator(**values)

"""JSONLines: a sink that appends every payload it receives to a file.

The step parameter ``output_filename`` names the file; a relative name is
taken under the first output root. Files may only be written under the
output roots: ``$ZHPC_HOME/output`` and the configured
``staging.allowed_roots`` (plus the service parameter ``output_roots``), so a
message cannot make the service write anywhere else.

Each line is ``{"message_id": ..., "recipe_id": ..., "payload": ...}``; the
message id stays the same when a message is delivered twice, so duplicates
(at-least-once delivery) can be recognised. The input is acked only after the
line is written and fsynced.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from zhpc import strictjson
from zhpc.config import zhpc_home
from zhpc.errors import Rejected
from zhpc.recipe import RecipeWrapper
from zhpc.service import Service

#: A ``{name}`` template python-workflows leaves in a recipe when no parameter fills it.
_UNFILLED = re.compile(r"\{[A-Za-z_$][^{}]*\}")


class JSONLines(Service):
    """Appends payloads to parameters.output_filename, one JSON line each."""

    queue = "jsonlines"

    def setup(self) -> None:
        roots = [zhpc_home() / "output", *self.config.staging.allowed_roots]
        roots += [Path(p) for p in self.parameters.get("output_roots", [])]
        self.roots = [root.expanduser().resolve() for root in roots]
        self.roots[0].mkdir(parents=True, exist_ok=True)
        self.fsync = bool(self.parameters.get("fsync", True))

    def target(self, filename: Any) -> Path:
        """The file to append to, refusing anything outside the output roots."""
        if not isinstance(filename, str) or not filename.strip():
            raise Rejected("parameter output_filename must be a non-empty string")
        if "\0" in filename:
            raise Rejected("parameter output_filename contains a NUL byte")
        unfilled = _UNFILLED.search(filename)
        if unfilled:
            raise Rejected(
                f"output_filename {filename[:200]!r} holds the unfilled template "
                f"{unfilled.group()[:60]}: the request did not set it"
            )
        path = Path(filename).expanduser()
        if not path.is_absolute():
            path = self.roots[0] / path
        path = path.resolve()
        if not any(path.is_relative_to(root) for root in self.roots):
            allowed = ", ".join(map(str, self.roots))
            raise Rejected(f"output_filename {filename!r} is outside the output roots ({allowed})")
        return path

    def process(self, rw: RecipeWrapper, payload: Any) -> None:
        path = self.target(rw.parameters.get("output_filename"))
        message = self.current_message
        record = {
            "message_id": message.message_id if message else None,
            "recipe_id": rw.recipe_id,
            "payload": payload,
        }
        try:
            line = strictjson.dumps(record, separators=(",", ":")) + "\n"
        except ValueError as exc:  # never write NaN/Infinity: other readers refuse them
            raise Rejected(f"payload cannot be written as JSON: {exc}") from None
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            if self.fsync:
                os.fsync(handle.fileno())
        rw.send(payload)

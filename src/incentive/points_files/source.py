"""The ``points_record`` data source: each ``D`` line of a partner's points file, with its
outcome (``valid`` until credited, ``credited`` or ``failed`` with its reason).

Its key is ``<file id>:<line number>``; records belong to no campaign. ``points`` is null
when the partner's value does not fit in 64 bits; ``points_text`` always holds its digits.
A record has no time of its own: ``changed_at`` is its file's last change, which comes at
or after each change of its records (staging, crediting). Points files publish no outbox
event: a sync reads ``since``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from sqlalchemy import Select

from incentive.kit.sources import ModuleType, TableSource, register_source
from incentive.points_files.models import PointsFile, PointsRecord


class PointsRecordSource(TableSource):
    name = "points_record"
    fields: ClassVar[Mapping[str, ModuleType]] = {
        "partner_id": "string",
        "file_id": "string",
        "file_name": "string",
        "line_no": "integer",
        "record_id": "string",
        "member_id": "string",
        "user_id": "string",
        "points": "integer",
        "points_text": "string",
        "txn_time": "datetime",
        "memo": "string",
        "status": "string",
        "reason": "string",
        "detail": "string",
    }
    key = (PointsRecord.file_id, PointsRecord.line_no)
    campaign = None
    changed = PointsFile.updated_at

    def columns(self) -> Mapping[str, Any]:
        named = {
            "partner_id": PointsFile.partner_id,
            "file_name": PointsFile.name,
            "status": PointsRecord.state,
        }
        return {f: named[f] if f in named else getattr(PointsRecord, f) for f in self.fields}

    def joined(self, stmt: Select[Any]) -> Select[Any]:
        return stmt.select_from(PointsRecord).join(
            PointsFile, PointsFile.id == PointsRecord.file_id
        )

    def shape(self, values: dict[str, Any]) -> dict[str, Any]:
        if values["points"] is not None:
            values["points_text"] = str(values["points"])
        return values


register_source(PointsRecordSource())

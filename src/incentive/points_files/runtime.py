"""Wiring of the points-file worker into a process (``incentive serve`` embedded, ``worker``)."""

from __future__ import annotations

from typing import Any

from incentive.points_files.pipeline import PointsPipeline


def start(app: Any, run_worker: bool) -> None:
    """With ``run_worker`` (``settings.embedded_worker``) this process polls partner inboxes
    and runs the pipeline; otherwise ``incentive worker`` does."""
    if not run_worker:
        return

    async def _points_worker(app: Any) -> None:
        pipeline = PointsPipeline(app.state.db, app.state.settings)
        app.state.points_pipeline = pipeline
        await pipeline.run_forever()

    app.state.background_tasks.append(_points_worker)

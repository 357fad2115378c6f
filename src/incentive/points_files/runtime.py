"""The points-file worker: polls partner inboxes and runs the pipeline (worker processes)."""

from __future__ import annotations

from fastapi import FastAPI

from incentive.domains import WorkerJob
from incentive.points_files.pipeline import PointsPipeline


async def _pipeline(app: FastAPI) -> None:
    pipeline = PointsPipeline(app.state.db, app.state.settings)
    app.state.points_pipeline = pipeline
    await pipeline.run_forever()


JOBS = (WorkerJob("points_files.pipeline", _pipeline),)

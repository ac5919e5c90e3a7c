"""embed: the chosen face → a 128-d vector, kept in Redis under the job id (never in the
message: task results are logged and shown in Flower)."""

from __future__ import annotations

import time

from aurum_ml.errors import BadInput
from aurum_ml.pipeline.backends import FaceBackend
from aurum_ml.pipeline.stages.detect import detection_of
from aurum_ml.pipeline.state import PipelineState
from aurum_ml.schemas import Job


def embed(job: Job, *, state: PipelineState, backend: FaceBackend) -> Job:
    if job.status == "rejected" or job.face is None:
        return job
    started = time.perf_counter()
    chip = state.get_chip(job.job_id)  # cut by the detect stage: no decode here
    try:
        if chip is not None:
            vector = backend.embed_chip(chip)
        else:  # detected before chips were handed on (a job in flight across an upgrade)
            vector = backend.embed(state.get_image(job.image_sha256), detection_of(job.face))
    except BadInput as exc:
        return job.reject(exc.reason, exc.message)
    state.put_embedding(job.job_id, vector)
    elapsed = (time.perf_counter() - started) * 1000
    return job.model_copy(
        update={
            "source": backend.source,  # the stored vector's origin
            "degraded": job.degraded or backend.source == "simulated",
            "timings_ms": job.timings_ms.model_copy(update={"embed": round(elapsed, 1)}),
        }
    )

"""The pipeline: a photo's way through detect → embed → score → store on Celery.

The Celery app and its tasks, the stages as plain functions, the face models (in process or
through the services), the images and jobs in flight, the probe and fallback, redrive,
re-scoring and webhooks. It imports the population and the core, never a surface.
"""

# One image for every aurum_ml process: workers, beat, Flower, the ML services, metrics.
# The model files come with the face_recognition_models package: nothing downloads at run time.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md celeryconfig.py ./
COPY aurum_ml ./aurum_ml
RUN pip install . \
    && useradd --create-home --uid 10001 aurum \
    && mkdir -p /data && chown aurum /data
USER aurum
ENV AURUM_DATA_DIR=/data
CMD ["aurum-ml", "--help"]

"""One frozen Settings object, built from the environment once.

Nobody else in the package reads ``os.environ``: code that needs a setting takes a
``Settings`` argument, and the process-wide instance comes from :func:`get_settings`.
Every variable is listed with its default and meaning in ``.env.example``.

Deployment modes follow from two variables:

- ``AURUM_BROKER_URL`` unset → the *embedded default*: ``memory://`` broker, in-process
  result backend, in-process pipeline state (fakeredis) and a local Qdrant folder. Only
  a process that also runs the worker (``aurum-ml score``) can use it.
- ``AURUM_BROKER_URL`` set → a cluster: the broker given, the result backend and the
  pipeline-state Redis from their own variables, defaulting to the broker when it is Redis.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import platformdirs
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from aurum_ml.callbacks import AllowList


class Settings(BaseSettings):
    """Typed, validated configuration. Sizes in bytes, times in seconds, lengths in px."""

    model_config = SettingsConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    # --- infrastructure -------------------------------------------------------------------
    broker_url: str | None = Field(None, validation_alias="AURUM_BROKER_URL")
    result_backend: str | None = Field(None, validation_alias="AURUM_RESULT_BACKEND")
    redis_url: str | None = Field(None, validation_alias="AURUM_REDIS_URL")
    data_dir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_data_dir("aurum-ml")),
        validation_alias="AURUM_DATA_DIR",
    )
    qdrant_path: Path | None = Field(None, validation_alias="QDRANT_PATH")
    qdrant_url: str | None = Field(None, validation_alias="QDRANT_URL")
    qdrant_api_key: str | None = Field(None, validation_alias="QDRANT_API_KEY")
    # Qdrant Edge (a local folder): a segment past this size (KB of vectors) gets an HNSW
    # index at the next optimisation; below it, it is searched exactly. Qdrant's default
    # is 10 000 KB (about 20 000 faces of 128 floats).
    qdrant_indexing_threshold_kb: int | None = Field(
        None, ge=1, validation_alias="QDRANT_INDEXING_THRESHOLD_KB"
    )

    # --- image limits ---------------------------------------------------------------------
    image_max_bytes: int = Field(10 * 1024 * 1024, gt=0, validation_alias="IMAGE_MAX_BYTES")
    image_max_pixels: int = Field(40_000_000, gt=0, validation_alias="IMAGE_MAX_PIXELS")
    image_max_pixels_full_decode: int = Field(
        24_000_000, gt=0, validation_alias="IMAGE_MAX_PIXELS_FULL_DECODE"
    )
    image_min_side: int = Field(64, ge=1, validation_alias="IMAGE_MIN_SIDE")
    # what decoding one image may take at its peak
    # (aurum_ml.pipeline.imaging.ImageInfo.decode_bytes):
    # an image that would take more is refused from its header as image_too_large
    image_decode_budget_mb: int = Field(110, ge=16, validation_alias="IMAGE_DECODE_BUDGET_MB")
    image_ttl_s: int = Field(3600, ge=60, validation_alias="IMAGE_TTL_SECONDS")

    # --- detection ------------------------------------------------------------------------
    detector: Literal["hog", "cnn"] = Field("hog", validation_alias="DETECTOR")
    detect_upsample: int = Field(0, ge=0, le=2, validation_alias="DETECT_UPSAMPLE")
    detect_max_side: int = Field(1280, ge=160, validation_alias="DETECT_MAX_SIDE")
    detect_min_score: float = Field(0.4, validation_alias="DETECT_MIN_SCORE")
    # HOG coarse to fine: first search without the pyramid's N finest levels (the smallest
    # faces); the full search runs only when that finds no face, or one near its floor.
    # 0: always the full search (aurum_ml.pipeline.backends.local.LocalFaceModel.detect_image)
    detect_coarse_levels: int = Field(3, ge=0, le=6, validation_alias="DETECT_COARSE_LEVELS")
    min_face_px: int = Field(48, ge=1, validation_alias="MIN_FACE_PX")
    allow_multiple_faces: bool = Field(False, validation_alias="ALLOW_MULTIPLE_FACES")
    # --- embedding ------------------------------------------------------------------------
    # onnx: dlib's ResNet weights (from the same model file) on ONNX Runtime, ~20x faster
    # than dlib-bin's own loops and the same vector to 1e-6; dlib: dlib's descriptor itself
    embed_engine: Literal["onnx", "dlib"] = Field("onnx", validation_alias="EMBED_ENGINE")
    embed_threads: int = Field(1, ge=1, le=64, validation_alias="EMBED_THREADS")
    # A worker consuming detect, embed and score with in-process models runs a job's three
    # stages in its intake task instead of sending them through the broker to itself.
    inline_local_stages: bool = Field(True, validation_alias="INLINE_LOCAL_STAGES")

    # --- quality gate (a face failing any threshold is rejected as low_quality) -----------
    quality_gate: bool = Field(True, validation_alias="QUALITY_GATE")
    quality_min_face_px: int = Field(64, ge=1, validation_alias="QUALITY_MIN_FACE_PX")
    quality_min_sharpness: float = Field(12.0, ge=0, validation_alias="QUALITY_MIN_SHARPNESS")
    quality_min_brightness: float = Field(25.0, ge=0, validation_alias="QUALITY_MIN_BRIGHTNESS")
    quality_min_highlights: float = Field(
        90.0, ge=0, le=255, validation_alias="QUALITY_MIN_HIGHLIGHTS"
    )
    quality_max_brightness: float = Field(225.0, le=255, validation_alias="QUALITY_MAX_BRIGHTNESS")
    quality_max_overexposed: float = Field(
        0.3, ge=0, le=1, validation_alias="QUALITY_MAX_OVEREXPOSED"
    )
    quality_max_roll_deg: float = Field(35.0, ge=0, validation_alias="QUALITY_MAX_ROLL_DEG")
    quality_max_yaw: float = Field(0.4, ge=0, validation_alias="QUALITY_MAX_YAW")
    quality_min_detection_score: float = Field(0.6, validation_alias="QUALITY_MIN_DETECTION_SCORE")

    # --- population: matches, cooldown, re-ranking, vibes ---------------------------------
    same_person_distance: float = Field(0.6, gt=0, validation_alias="SAME_PERSON_DISTANCE")
    match_limit: int = Field(10, ge=0, le=100, validation_alias="MATCH_LIMIT")
    cooldown_days: float = Field(30.0, ge=0, validation_alias="COOLDOWN_DAYS")
    rerank_interval_s: float = Field(3600.0, ge=1, validation_alias="RERANK_INTERVAL")
    rerank_batch: int = Field(1000, ge=10, le=100_000, validation_alias="RERANK_BATCH")
    vibe_reference_min_faces: int = Field(200, ge=2, validation_alias="VIBE_REFERENCE_MIN_FACES")

    # --- retries (Celery autoretry; see celeryconfig.py) ---------------------------------
    task_max_retries: int = Field(8, ge=0, le=20, validation_alias="TASK_MAX_RETRIES")
    retry_backoff_max_s: int = Field(30, ge=1, le=600, validation_alias="RETRY_BACKOFF_MAX")
    publish_max_retries: int = Field(30, ge=0, le=1000, validation_alias="PUBLISH_MAX_RETRIES")
    visibility_timeout_s: int | None = Field(
        None, ge=5, validation_alias="BROKER_VISIBILITY_TIMEOUT"
    )
    result_expires_s: int = Field(86400, ge=60, validation_alias="RESULT_EXPIRES")
    # a job no stage ran on for this long, and no backlog it could be waiting in, was
    # lost by the broker: beat sends it again (aurum_ml.pipeline.redrive)
    stalled_after_s: int = Field(600, ge=5, validation_alias="STALLED_AFTER")
    redrive_interval_s: float = Field(60.0, gt=0, le=3600, validation_alias="REDRIVE_INTERVAL")
    redrive_max: int = Field(3, ge=0, le=20, validation_alias="REDRIVE_MAX")
    compact_min_interval_s: int = Field(600, ge=0, validation_alias="COMPACT_MIN_INTERVAL")

    # --- ML services: detection and embedding over HTTP, and the fallback ----------------
    face_detection_service: str | None = Field(None, validation_alias="FACE_DETECTION_SERVICE")
    face_embedding_service: str | None = Field(None, validation_alias="FACE_EMBEDDING_SERVICE")
    ml_service_timeout: float = Field(10.0, gt=0, le=300, validation_alias="ML_SERVICE_TIMEOUT")
    ml_service_token: str | None = Field(None, validation_alias="ML_SERVICE_TOKEN")
    use_real_ml: bool = Field(True, validation_alias="USE_REAL_ML")
    fallback_to_simulated: bool = Field(True, validation_alias="FALLBACK_TO_SIMULATED")
    simulated_ml_threshold: float = Field(
        0.7, ge=0.0, le=1.0, validation_alias="SIMULATED_ML_THRESHOLD"
    )

    # --- health probe and fallback --------------------------------------------------------
    health_probe_interval_s: float = Field(
        10.0, gt=0, le=3600, validation_alias="HEALTH_PROBE_INTERVAL"
    )
    health_timeout_s: float = Field(2.0, gt=0, le=60, validation_alias="HEALTH_TIMEOUT")
    health_window: int = Field(10, ge=1, le=1000, validation_alias="HEALTH_WINDOW")
    health_failure_probes: int = Field(2, ge=1, le=100, validation_alias="HEALTH_FAILURE_PROBES")
    health_recovery_probes: int = Field(3, ge=1, le=100, validation_alias="HEALTH_RECOVERY_PROBES")
    # adaptive hold (aurum_ml.pipeline.health): each time the flag turned on within this many
    # seconds before, the successes it needs to turn off double, up to FALLBACK_MAX_HOLD s
    fallback_flap_window_s: float = Field(900.0, ge=0, validation_alias="FALLBACK_FLAP_WINDOW")
    fallback_max_hold_s: float = Field(600.0, ge=0, validation_alias="FALLBACK_MAX_HOLD")
    fallback_backend: Literal["local", "simulated"] = Field(
        "local", validation_alias="FALLBACK_BACKEND"
    )

    # how long a population query or the re-rank (CLI, HTTP API) waits for a worker's answer
    query_timeout_s: float = Field(120.0, gt=0, le=3600, validation_alias="QUERY_TIMEOUT")

    # --- every HTTP server we ship (aurum_ml.surfaces.serving) -------------------------------
    http_header_timeout_s: float = Field(10.0, gt=0, le=300, validation_alias="HTTP_HEADER_TIMEOUT")
    http_body_timeout_s: float = Field(60.0, gt=0, le=3600, validation_alias="HTTP_BODY_TIMEOUT")
    http_keepalive_timeout_s: int = Field(
        5, ge=1, le=300, validation_alias="HTTP_KEEPALIVE_TIMEOUT"
    )
    http_max_connections: int = Field(
        200, ge=1, le=100_000, validation_alias="HTTP_MAX_CONNECTIONS"
    )

    # --- HTTP API and webhooks (aurum-ml serve api) -----------------------------------------
    api_keys: str | None = Field(None, validation_alias="AURUM_API_KEYS")
    api_rate_limit: str = Field("10/minute", validation_alias="AURUM_API_RATE_LIMIT")
    # GETs (jobs, users, leaderboard, stats), per key: polling a job is a GET
    api_read_rate_limit: str = Field("600/minute", validation_alias="AURUM_API_READ_RATE_LIMIT")
    # names of keys with rights over every tenant's users (operators), comma-separated
    api_admin_keys: str = Field("", validation_alias="AURUM_API_ADMIN_KEYS")
    # the API's public base URL, for status_url (unset: status_url is a relative URL)
    api_public_url: str | None = Field(None, validation_alias="AURUM_API_PUBLIC_URL")
    webhook_url: str | None = Field(None, validation_alias="AURUM_WEBHOOK_URL")
    webhook_secret: str | None = Field(None, validation_alias="AURUM_WEBHOOK_SECRET")
    webhook_allowed_hosts: str = Field("", validation_alias="AURUM_WEBHOOK_ALLOWED_HOSTS")
    webhook_timeout_s: float = Field(5.0, gt=0, le=60, validation_alias="WEBHOOK_TIMEOUT")
    webhook_retry_for_s: float = Field(3600.0, ge=0, validation_alias="WEBHOOK_RETRY_FOR")

    @field_validator("api_keys", "webhook_url", "webhook_secret", "api_public_url", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("api_keys")
    @classmethod
    def _check_api_keys(cls, value: str | None) -> str | None:
        if value is None:
            return None
        names: set[str] = set()
        secrets: set[str] = set()
        for entry in value.split(","):
            name, sep, key = entry.strip().partition(":")
            if not sep or not name or len(key) < 16:
                raise ValueError(
                    "AURUM_API_KEYS is a comma-separated list of name:key, each key at least "
                    "16 characters (e.g. miniapp:$(openssl rand -hex 24))"
                )
            if name in names or key in secrets:
                raise ValueError("AURUM_API_KEYS names and keys must be unique")
            names.add(name)
            secrets.add(key)
        return value

    @field_validator("api_public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(
                "AURUM_API_PUBLIC_URL must be an http(s) URL, e.g. https://api.example"
            )
        return value.rstrip("/") if value else value

    @field_validator("api_rate_limit", "api_read_rate_limit")
    @classmethod
    def _check_rate_limit(cls, value: str) -> str:
        from limits import parse

        try:
            parse(value)
        except ValueError:
            raise ValueError(
                "AURUM_API_RATE_LIMIT and AURUM_API_READ_RATE_LIMIT must read like "
                "10/minute or 100 per hour"
            ) from None
        return value

    @field_validator("webhook_allowed_hosts")
    @classmethod
    def _check_allowed_hosts(cls, value: str) -> str:
        from aurum_ml.callbacks import parse_allow_list

        parse_allow_list(value)  # a malformed entry fails at start-up, naming it
        return value

    @field_validator("visibility_timeout_s", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _check_admin_keys(self) -> Settings:
        unknown = self.api_admin_key_names - set(self.api_key_table)
        if unknown:
            raise ValueError(
                f"AURUM_API_ADMIN_KEYS names keys that AURUM_API_KEYS does not: {sorted(unknown)}"
            )
        return self

    @model_validator(mode="after")
    def _check_state_store(self) -> Settings:
        if (
            self.broker_url
            and not self.redis_url
            and not self.broker_url.startswith(("redis://", "rediss://"))
        ):
            raise ValueError(
                "AURUM_REDIS_URL is required when AURUM_BROKER_URL is not a Redis URL "
                "(pipeline state lives in Redis)"
            )
        if (
            self.broker_url
            and not self.result_backend
            and not self.broker_url.startswith(("redis://", "rediss://"))
        ):
            raise ValueError(
                "AURUM_RESULT_BACKEND is required when AURUM_BROKER_URL is not a Redis URL"
            )
        return self

    # --- derived values -------------------------------------------------------------------
    @property
    def embedded(self) -> bool:
        """True when no broker is configured: everything runs inside one process."""
        return self.broker_url is None

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or "memory://localhost//"

    @property
    def celery_result_backend(self) -> str:
        return self.result_backend or self.broker_url or "cache+memory://"

    @property
    def state_url(self) -> str | None:
        """Redis URL for pipeline state, or None for the in-process store (embedded)."""
        return self.redis_url or self.broker_url

    @property
    def image_decode_budget_bytes(self) -> int:
        return self.image_decode_budget_mb * 1_000_000

    @property
    def cooldown_s(self) -> int:
        return round(self.cooldown_days * 86400)

    @property
    def api_key_table(self) -> dict[str, str]:
        """Key name → key, from AURUM_API_KEYS."""
        if not self.api_keys:
            return {}
        pairs = (entry.strip().partition(":") for entry in self.api_keys.split(","))
        return {name: key for name, _, key in pairs}

    @property
    def api_admin_key_names(self) -> set[str]:
        return {n.strip() for n in self.api_admin_keys.split(",") if n.strip()}

    @property
    def webhook_allow_list(self) -> AllowList:
        """AURUM_WEBHOOK_ALLOWED_HOSTS, parsed (aurum_ml.callbacks)."""
        from aurum_ml.callbacks import parse_allow_list

        return parse_allow_list(self.webhook_allowed_hosts)

    @property
    def qdrant_folder(self) -> Path:
        return self.qdrant_path or self.data_dir / "qdrant"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()

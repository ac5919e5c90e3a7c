"""The thin caller (aurum_ml.client) in an app that has only celery, kombu and redis: it
submits a real photo to the real pipeline (a worker thread in this process, on the test
Redis) and gets the same result; bad arguments are refused there, typed, with nothing
published; its settings are the workers' (#26)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from thin_venv import HEAVY, ROOT, thin_python

from aurum_ml.client import CallerSettings
from aurum_ml.population.forget import forget_user
from aurum_ml.settings import Settings

TIMEOUT = 120

SUBMIT = """
import json, sys, time
started = time.perf_counter()
from aurum_ml.client import score_face
imported = time.perf_counter() - started
from aurum_ml.errors import InvalidRequest
with open(sys.argv[1], "rb") as f:
    import base64
    image = base64.b64encode(f.read()).decode()
refused = []
for bad in ({"user_id": "u\\nforged"}, {"user_id": "u", "allow_multiple_faces": "yes"}):
    try:
        score_face.delay(image, **bad)
    except InvalidRequest as exc:
        refused.append(exc.reason)
job = score_face.delay(image, user_id=sys.argv[2])
result = job.get(timeout=float(sys.argv[3]))
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[4].split(",")))
ours = sorted(m for m in sys.modules if m.startswith("aurum_ml"))
print(json.dumps({"job_id": job.id, "result": result, "refused": refused, "heavy": heavy,
                  "ours": ours, "import_s": imported}))
"""


def _thin_env() -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "AURUM_BROKER_URL", "AURUM_RESULT_BACKEND", "AURUM_REDIS_URL")
    env = {k: v for k, v in os.environ.items() if k in keep}
    return env | {"PYTHONPATH": str(ROOT), "PYTHONNOUSERSITE": "1"}


@pytest.fixture(scope="module")
def thin() -> Path:
    return thin_python()


def test_the_thin_venv_really_lacks_the_heavy_dependencies(thin):
    found = subprocess.run(
        [str(thin), "-c", "import importlib.util as u, sys; "
         "print(','.join(m for m in sys.argv[1:] if u.find_spec(m)))", *HEAVY],
        capture_output=True, text=True, check=True, env=_thin_env(),
    ).stdout.strip()  # fmt: skip
    assert found == ""


def test_a_photo_submitted_from_the_thin_venv_is_scored(thin, pipeline_worker, photos, runtime):
    user = "u-thin-caller"
    out = subprocess.run(
        [str(thin), "-c", SUBMIT, str(photos / "obama.jpg"), user, str(TIMEOUT), ",".join(HEAVY)],
        capture_output=True, text=True, env=_thin_env(), timeout=TIMEOUT + 60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    result = seen["result"]
    assert result["status"] == "scored" and result["job_id"] == seen["job_id"], result
    assert result["user_id"] == user and 0 <= result["score"] <= 100
    assert seen["refused"] == ["invalid_request", "invalid_request"]  # typed, in the caller
    assert seen["heavy"] == []
    assert set(seen["ours"]) <= {
        "aurum_ml", "aurum_ml.client", "aurum_ml.request", "aurum_ml.keys", "aurum_ml.errors",
    }  # fmt: skip
    # the job went the one way: entered, admitted, ended; its image was let go
    assert runtime.state.redis.zscore("aurum:inflight", seen["job_id"]) is None
    assert runtime.vectors.user_points(user) != []
    forget_user(runtime, user, jobs=runtime)
    assert runtime.vectors.user_points(user) == []


def test_without_a_broker_the_thin_caller_says_what_to_set(thin):
    env = {k: v for k, v in _thin_env().items() if not k.startswith("AURUM_")}
    out = subprocess.run(
        [str(thin), "-c", "from aurum_ml.client import score_face\n"
         "score_face.delay('AAAA', user_id='u')"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1
    assert "ConfigError: AURUM_BROKER_URL is not set" in out.stderr


@pytest.mark.parametrize(
    "environ",
    [
        {"AURUM_BROKER_URL": "redis://127.0.0.1:6379/3"},
        {
            "AURUM_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//",
            "AURUM_RESULT_BACKEND": "redis://127.0.0.1:6379/4",
            "AURUM_REDIS_URL": "redis://127.0.0.1:6379/5",
            "IMAGE_MAX_BYTES": "1000000",
            "IMAGE_TTL_SECONDS": "120",
            "RESULT_EXPIRES": "600",
            "PUBLISH_MAX_RETRIES": "3",
        },
    ],
    ids=["defaults", "every-setting"],
)
def test_the_callers_settings_are_the_workers(environ, monkeypatch):
    for name in os.environ:
        if name.startswith(("AURUM_", "IMAGE_", "RESULT_", "PUBLISH_")):
            monkeypatch.delenv(name)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    full, thin = Settings(), CallerSettings.from_env()
    assert thin == CallerSettings(
        broker_url=full.celery_broker_url,
        result_backend=full.celery_result_backend,
        redis_url=str(full.state_url),
        image_max_bytes=full.image_max_bytes,
        image_ttl_s=full.image_ttl_s,
        keep_s=full.result_expires_s,
        publish_max_retries=full.publish_max_retries,
    )


def test_with_the_broker_down_the_thin_caller_raises_a_typed_error(thin):
    """Nothing listens on 127.0.0.1:1: a typed, retryable error, not Celery's RuntimeError."""
    dead = "redis://127.0.0.1:1/0"
    script = (
        "import aurum_ml.client as c\n"
        "from aurum_ml.errors import StateUnavailable\n"
        f"c._caller = c.Caller(c.CallerSettings({dead!r}, {dead!r}, {dead!r}, "
        "publish_max_retries=1))\n"
        "try:\n"
        "    c.score_face.delay('AAAA', user_id='u')\n"
        "except StateUnavailable as exc:\n"
        "    print('typed:', exc)\n"
    )
    out = subprocess.run([str(thin), "-c", script], capture_output=True, text=True,
                         env=_thin_env(), timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "typed: the broker or its result store is unreachable" in out.stdout

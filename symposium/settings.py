"""Settings for Symposium, read from the environment.

Every setting has an embedded default that runs the platform on one machine with
nothing else installed: SQLite, the in-memory channel layer and inline dispatch.
`DATABASE_URL` switches to PostgreSQL, `REDIS_URL` to RQ queues and the channels-redis
layer. `SYMPOSIUM_MODE=production` refuses the development shortcuts (a generated
secret key, DEBUG) and turns on the HTTPS settings `check --deploy` asks for.
"""

import os
import secrets
import tempfile
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def envbool(name, default):
    value = os.environ.get(name, default)
    if value in ("True", "true", "1", "yes", "on"):
        return True
    if value in ("False", "false", "0", "no", "off", ""):
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {value!r}")


def envint(name, default):
    value = os.environ.get(name, default)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ImproperlyConfigured(f"{name} must be an integer, not {value!r}") from None


def envfloat(name, default):
    value = os.environ.get(name, default)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ImproperlyConfigured(f"{name} must be a number, not {value!r}") from None


def envsecret(name):
    """A secret from NAME, or from the file that NAME_FILE points to."""
    if os.environ.get(f"{name}_FILE"):
        return Path(os.environ[f"{name}_FILE"]).read_text().strip()
    return os.environ.get(name, "")


MODE = os.environ.get("SYMPOSIUM_MODE", "development")
if MODE not in ("development", "production"):
    raise ImproperlyConfigured(f"SYMPOSIUM_MODE must be development or production, not {MODE!r}")
PRODUCTION = MODE == "production"

# Runtime state (tenant storage, the development secret key, the SQLite database)
# lives under VAR_DIR, which is not in git.
VAR_DIR = Path(os.environ.get("SYMPOSIUM_VAR_DIR", BASE_DIR / "var"))

SECRET_KEY = envsecret("SECRET_KEY")
if not SECRET_KEY:
    if PRODUCTION:
        raise ImproperlyConfigured("SECRET_KEY (or SECRET_KEY_FILE) is required in production mode")
    # Generated once per checkout so that sessions survive restarts; never committed.
    key_file = VAR_DIR / "secret_key"
    if not key_file.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        key_file.write_text(secrets.token_urlsafe(64))
        key_file.chmod(0o600)
    SECRET_KEY = key_file.read_text().strip()

# Tenant secrets are encrypted at rest with this key. A separate key can be set so that
# rotating SECRET_KEY (sessions) does not make every stored secret unreadable.
SECRETS_ENCRYPTION_KEY = envsecret("SYMPOSIUM_SECRETS_KEY") or SECRET_KEY

DEBUG = envbool("DEBUG", "false" if PRODUCTION else "true")
ALLOWED_HOSTS = [h for h in os.environ.get("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o]

INSTALLED_APPS = [
    # Before daphne: its runserver (Daphne's own) also fires schedules on the embedded default.
    "blocks",
    "daphne",
    # The pages (runner, login, admin overview). Listed before django.contrib.admin so its
    # templates (console/templates/admin/) override the admin's own.
    "console",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_rq",
    "tenants",
    "isolates",
    "capabilities",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "symposium.urls"
ASGI_APPLICATION = "symposium.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
    DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}_{os.getpid()}"}
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "symposium.sqlite3",
            # WAL lets the broker write audit rows while pages read them.
            # IMMEDIATE: a transaction takes the write lock when it begins, so one that
            # reads and then writes waits its turn (busy timeout) instead of failing with
            # "database is locked" when another thread wrote in between.
            # synchronous=NORMAL: in WAL mode a commit no longer waits for an fsync; a
            # crash of the server loses nothing, a power cut may lose the last commits
            # (docs/deploy.md). Every run's start wrote five fsynced commits before.
            "OPTIONS": {"init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;", "timeout": 20,
                        "transaction_mode": "IMMEDIATE"},
            # Kept: a new connection per database_sync_to_async call (the default) cost an
            # open and the pragmas on every run start, claim and audit batch.
            "CONN_MAX_AGE": None,
            # Tests use a file too: the broker, the audit writer and the isolates'
            # supervisor write from several threads, which an in-memory shared-cache
            # database refuses ("table is locked") instead of waiting.
            # One per test process, so that test runs side by side do not share it.
            "TEST": {"NAME": str(Path(tempfile.gettempdir()) / f"symposium-test-{os.getpid()}.sqlite3")},
        }
    }
USING_POSTGRES = DATABASES["default"]["ENGINE"].endswith("postgresql")

REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [REDIS_URL],
                "prefix": os.environ.get("SYMPOSIUM_REDIS_PREFIX", "symposium"),
                # Messages a channel may hold before sends to it fail: a run printing
                # fast sends an event per line to whoever watches it.
                "capacity": 2000,
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 2000}}}

RQ_QUEUES = {
    "capabilities": {"URL": REDIS_URL or "redis://127.0.0.1:6379/0", "DEFAULT_TIMEOUT": 900},
}

# Which capabilities run as RQ jobs when Redis is configured. The rest run inline in a
# thread of the broker. Files default to inline: a local disk call is faster than a
# queue round trip, and any server process can reach the tenant's storage.
SYMPOSIUM_RQ_CAPABILITIES = [
    c for c in os.environ.get("SYMPOSIUM_RQ_CAPABILITIES", "network,canvas,database,process,email,image" if REDIS_URL else "").split(",") if c
]

# A pids cgroup (v1 or v2 folder) that process execution may create per-command
# groups in, where /sys/fs/cgroup/pids is not available (see docs/process.md).
SYMPOSIUM_PROCESS_CGROUP = os.environ.get("SYMPOSIUM_PROCESS_CGROUP", "")
# The user (and group) id a sandboxed command runs as on the server when the server runs
# as root: one that owns nothing but the tenants' files (docs/process.md). Not as root,
# commands run as the server's own user, the only one it can map.
SYMPOSIUM_PROCESS_SANDBOX_UID = envint("SYMPOSIUM_PROCESS_SANDBOX_UID", 1_899_999_000)
# Sandboxed commands are forked by a small helper process of each server process instead
# of by the server itself (capabilities.process.spawner; docs/process.md). Off: the
# server forks itself for each command, copying its page tables.
SYMPOSIUM_PROCESS_SPAWNER = os.environ.get("SYMPOSIUM_PROCESS_SPAWNER", "1") != "0"
# Containment layers the web server must find on this machine (isolates.containment:
# landlock or landlock:N for a minimum ABI, seccomp, namespaces, cgroup-pids,
# cgroup-memory, nosuid-storage). With DEBUG off it refuses to start without them; none
# are required by default, and `manage.py sandboxcheck` shows what the machine has.
SYMPOSIUM_REQUIRED_LAYERS = [n.strip() for n in os.environ.get("SYMPOSIUM_REQUIRED_LAYERS", "").split(",") if n.strip()]

# Email of blocks (docs/email.md): the relay, as smtp://user:password@host:port?tls=1
# (STARTTLS; ssl=1 or smtps:// for TLS from the start). Empty: messages go to the outbox
# the admin shows, and nothing leaves the machine.
def email_settings(url):
    if not url:
        return {"EMAIL_BACKEND": "capabilities.email.backends.OutboxBackend"}
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise ImproperlyConfigured("SYMPOSIUM_EMAIL_URL must look like smtp://user:password@host:587?tls=1")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(query) - {"tls", "ssl", "timeout"}
    if unknown:
        raise ImproperlyConfigured(f"SYMPOSIUM_EMAIL_URL has unknown options: {', '.join(sorted(unknown))} (known: tls, ssl, timeout)")
    flag = {"1": True, "true": True, "0": False, "false": False}
    if any(query.get(k, "0").lower() not in flag for k in ("tls", "ssl")):
        raise ImproperlyConfigured("SYMPOSIUM_EMAIL_URL's tls and ssl options are 1 or 0")
    use_ssl = parts.scheme == "smtps" or flag[query.get("ssl", "0").lower()]
    use_tls = flag[query.get("tls", "0").lower()]
    if use_ssl and use_tls:
        raise ImproperlyConfigured("SYMPOSIUM_EMAIL_URL: tls (STARTTLS) and ssl (TLS from the start) exclude each other")
    try:
        port = parts.port or (465 if use_ssl else 587 if use_tls else 25)
        timeout = float(query.get("timeout", "20"))
    except ValueError:
        raise ImproperlyConfigured("SYMPOSIUM_EMAIL_URL has a port or timeout that is not a number") from None
    return {
        "EMAIL_BACKEND": "capabilities.email.backends.SmtpBackend",
        "EMAIL_HOST": parts.hostname,
        "EMAIL_PORT": port,
        "EMAIL_HOST_USER": unquote(parts.username or ""),
        "EMAIL_HOST_PASSWORD": unquote(parts.password or ""),
        "EMAIL_USE_TLS": use_tls,
        "EMAIL_USE_SSL": use_ssl,
        "EMAIL_TIMEOUT": timeout,
    }


globals().update(email_settings(envsecret("SYMPOSIUM_EMAIL_URL")))

# Who else may listen on a tenant's private realtime channels, besides its logged-in
# members (docs/realtime.md): dotted paths of functions (scope, tenant, channel) -> bool.
SYMPOSIUM_REALTIME_AUTHORIZERS = [p for p in os.environ.get("SYMPOSIUM_REALTIME_AUTHORIZERS", "").split(",") if p]

# Tenant storage: one folder per tenant under this root.
TENANT_STORAGE_ROOT = Path(os.environ.get("SYMPOSIUM_STORAGE_ROOT", VAR_DIR / "storage"))

# Vetted npm packages (docs/packages.md): where addpackage keeps their bundles (read by
# the broker, never by isolates), and the registry it fetches them from.
SYMPOSIUM_PACKAGE_CACHE = Path(os.environ.get("SYMPOSIUM_PACKAGE_CACHE", VAR_DIR / "packages"))
SYMPOSIUM_NPM_REGISTRY = os.environ.get("SYMPOSIUM_NPM_REGISTRY", "https://registry.npmjs.org/")

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", VAR_DIR / "static"))
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/runner/"

if PRODUCTION:
    SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", "true")
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_CONTENT_TYPE_NOSNIFF = True

# Everything goes to one handler, the root's. Django's own logging gives the `django`
# logger (and runserver's request loggers) handlers of their own, and their records
# propagate to the root as well: every line would be written twice. So those loggers
# keep no handler of their own; the request lines ("HTTP GET / 200") stay at INFO.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "WARNING")},
    "loggers": {
        # The sandbox's layers, one line each when the server starts (isolates.containment).
        "symposium.sandbox": {"level": "INFO"},
        "django": {"handlers": [], "propagate": True},
        "django.server": {"handlers": [], "level": "INFO", "propagate": True},
        "django.channels.server": {"handlers": [], "level": "INFO", "propagate": True},
    },
}

# Per-run state that outlives one capability call (a canvas's operations): shared by
# every process through Redis when it is configured.
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "runstate": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL, "KEY_PREFIX": "symposium-run", "TIMEOUT": 86400}
        if REDIS_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "runstate", "TIMEOUT": 86400, "OPTIONS": {"MAX_ENTRIES": 100000}}
    ),
}

# The websocket transport's limit on one message; isolates.protocol.LIMITS reads it as
# the ceiling of a frame. Daphne's default (1 MB) would not carry a 5 MB file.
DAPHNE_WEBSOCKET_MAX_MESSAGE_SIZE = DAPHNE_WEBSOCKET_MAX_FRAME_SIZE = 128 * 1024 * 1024

# Isolates kept started and locked down, per memory size, so a run does not wait for a
# process to start. Each idle isolate costs about 20 MB (PSS).
SYMPOSIUM_WARM_ISOLATES = envint("SYMPOSIUM_WARM_ISOLATES", 2)
# The port isolates of this server process connect back to. Under runserver/daphne it
# is the port the server listens on; runblock picks a free loopback port itself.
SYMPOSIUM_BROKER_PORT = envint("SYMPOSIUM_BROKER_PORT", 8000)
# Whether the server process fires due schedules itself (the embedded default: SQLite
# has one server) or leaves them to `manage.py runschedules` processes (PostgreSQL).
SYMPOSIUM_SCHEDULES_IN_SERVER = envbool("SYMPOSIUM_SCHEDULES_IN_SERVER", "false" if DATABASE_URL else "true")
# What happens to a run started from the runner page when its page goes away.
SYMPOSIUM_KILL_RUNS_ON_DISCONNECT = envbool("SYMPOSIUM_KILL_RUNS_ON_DISCONNECT", "false")

# Reliability (docs/deploy.md says what each bounds).
# Runs one server process supervises at once; past it new runs are refused as busy. Each
# holds an isolate (about 20 MB when idle, up to its profile's memory limit) and a share
# of the server's event loop.
SYMPOSIUM_MAX_RUNS_PER_PROCESS = envint("SYMPOSIUM_MAX_RUNS_PER_PROCESS", 100)
# How often a server process writes its heartbeat (and reaps the runs of dead servers).
SYMPOSIUM_HEARTBEAT_SECONDS = envfloat("SYMPOSIUM_HEARTBEAT_SECONDS", 5)
# How long without a heartbeat before a server counts as gone and its runs are failed.
# Several heartbeats, so that a slow database or a busy event loop does not get live
# runs reaped.
SYMPOSIUM_HEARTBEAT_STALE_SECONDS = envfloat("SYMPOSIUM_HEARTBEAT_STALE_SECONDS", 30)
# How long a run's last write is retried while the database restarts.
SYMPOSIUM_FINISH_RETRY_SECONDS = envfloat("SYMPOSIUM_FINISH_RETRY_SECONDS", 60)
# How often a call whose RQ worker died is queued again, where that is safe (reads).
SYMPOSIUM_RQ_RETRIES = envint("SYMPOSIUM_RQ_RETRIES", 2)
# Audit rows held in memory while the database is down (about 1 KB each); the oldest of
# the rest go to files in SYMPOSIUM_AUDIT_SPILL_DIR (one folder per machine).
SYMPOSIUM_AUDIT_BACKLOG = envint("SYMPOSIUM_AUDIT_BACKLOG", 50000)
SYMPOSIUM_AUDIT_SPILL_DIR = Path(os.environ.get("SYMPOSIUM_AUDIT_SPILL_DIR") or VAR_DIR)
# Threads of one server process that run capability calls inline (those not sent to RQ):
# how many handler calls it runs at once; more wait their turn.
SYMPOSIUM_INLINE_THREADS = envint("SYMPOSIUM_INLINE_THREADS", 16)
# The operations marked `on_loop` in capabilities/registry.py (fileExists, getFileInfo: a
# few metadata system calls on the local storage disk) are answered on the server's event
# loop, with no thread hop. Turn it off when the storage folder is on a network file
# system, where a stat can block for long.
SYMPOSIUM_CALLS_ON_LOOP = envbool("SYMPOSIUM_CALLS_ON_LOOP", "true")
# Memory the memory-heavy calls of one process (canvas exports, image transforms) may hold
# at once, by their estimates (capabilities/memory_budget.py); a call that does not fit
# waits its turn, up to 10 s, then is refused. At least the largest export's 640 MB.
SYMPOSIUM_HEAVY_MEMORY_MB = envint("SYMPOSIUM_HEAVY_MEMORY_MB", 1024)

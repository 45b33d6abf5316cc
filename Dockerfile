# Symposium's image: one image for every process kind (web, worker, reaper); the command
# picks the kind (see compose.yaml and the Procfile).
FROM python:3.11-slim-bookworm

# bubblewrap: the sandbox of process.execute; libseccomp: the isolates' syscall filter.
RUN apt-get update \
 && apt-get install -y --no-install-recommends bubblewrap libseccomp2 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /srv/symposium
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .

ENV SYMPOSIUM_MODE=production \
    SYMPOSIUM_VAR_DIR=/var/lib/symposium \
    SYMPOSIUM_STORAGE_ROOT=/var/lib/symposium/storage \
    STATIC_ROOT=/srv/symposium/static-root \
    PYTHONUNBUFFERED=1
# collectstatic reads the settings, which insist on a SECRET_KEY in production mode; this
# one exists only during the build.
RUN SECRET_KEY=build-only python manage.py collectstatic --noinput -v0

# The platform never runs as root. Nothing it does needs root: bubblewrap builds its
# sandboxes in user namespaces an unprivileged user may make (compose.yaml lifts Docker's
# seccomp and AppArmor profiles, which forbid them), and commands then run as this user
# inside them, mapped to uid 1000 there, with no capability. What root would add is a uid
# of its own per isolate and per command (docs/isolates.md, docs/process.md); it is not
# worth a root server. The var folder (and the storage volume mounted on it) is its own.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/symposium --no-create-home symposium \
 && mkdir -p /var/lib/symposium/storage \
 && chown -R symposium:symposium /var/lib/symposium
USER symposium

EXPOSE 8000
CMD ["python", "-m", "daphne", "--proxy-headers", "-b", "0.0.0.0", "-p", "8000", "symposium.asgi:application"]

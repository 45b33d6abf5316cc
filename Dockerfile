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

EXPOSE 8000
CMD ["python", "-m", "daphne", "--proxy-headers", "-b", "0.0.0.0", "-p", "8000", "symposium.asgi:application"]

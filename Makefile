# The two commands of the README:
#   make up     set up and start the platform at http://127.0.0.1:8000 (SQLite, no Redis)
#   make test   run the whole test suite: on SQLite + inline dispatch, then on
#               PostgreSQL + Redis (RQ workers, channels-redis)

PY := .venv/bin/python
PG_URL ?= postgres://postgres@127.0.0.1:5432/symposium
REDIS_TEST_URL ?= redis://127.0.0.1:6379/1

.PHONY: up setup test test-embedded test-services

setup:
	@scripts/setup

up: setup
	@$(PY) manage.py migrate -v0
	@$(PY) manage.py createdemo
	@$(PY) manage.py loginlink
	$(PY) manage.py runserver 127.0.0.1:8000

test: export SYMPOSIUM_BROWSER_TESTS = 1
test: setup
	@$(MAKE) --no-print-directory test-embedded
	@$(MAKE) --no-print-directory test-services

test-embedded:
	@echo "== Test run 1 of 2: SQLite, inline dispatch, in-memory channel layer"
	env -u DATABASE_URL -u REDIS_URL $(PY) -m pytest $(PYTEST_ARGS)

test-services:
	@echo "== Test run 2 of 2: PostgreSQL, Redis (RQ workers, channels-redis)"
	@$(PY) scripts/ensure_database.py $(PG_URL)
	DATABASE_URL=$(PG_URL) REDIS_URL=$(REDIS_TEST_URL) $(PY) -m pytest $(PYTEST_ARGS)

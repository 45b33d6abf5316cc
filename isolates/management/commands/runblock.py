import asyncio
import json
import os
import sys
import time
from pathlib import Path

from channels.layers import get_channel_layer
from django.core.management.base import BaseCommand, CommandError

from isolates.containment import announce_active_layers
from isolates.errors import code_frame, format_error, run_error
from isolates.runevents import run_group
from isolates.runs import RunRefused, service_for_port
from isolates.server import local_server
from isolates.typecheck import TypeCheckError, check_types, format_diagnostic, is_typescript
from tenants.models import Tenant


class UsageError(CommandError):
    def __init__(self, message):
        super().__init__(message, returncode=2)


class Command(BaseCommand):
    help = (
        "Run one block as a tenant. Console output goes to stderr as it happens, the "
        "result to stdout. Exit status: 0 when the block succeeded, 1 when it failed or "
        "timed out, 2 for a usage error. Needs no server: it starts the broker in-process."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", nargs="?", help="The block's file, or - to read it from stdin")
        parser.add_argument("--tenant", required=True, help="The slug of the tenant to run as")
        parser.add_argument("--input", default=None, help="JSON passed to the block's default export")
        parser.add_argument("--json", action="store_true", dest="as_json", help="Print one JSON object {status, result, error, logs, stats}")
        parser.add_argument("--check", action="store_true",
                            help="Check a TypeScript block's types instead of running it: prints file:line:col: message for each "
                                 "type error; exit status 0 when there is none, 1 when there are")

    def handle(self, file, tenant, input, as_json, **options):
        # stderr is the block's console here: the sandbox's layers are not announced
        # (`manage.py sandboxcheck` lists them), only a missing one is; -v 2 shows all.
        announce_active_layers(options["verbosity"] >= 2)
        try:
            tenant_obj = Tenant.objects.get(slug=tenant)
        except Tenant.DoesNotExist:
            raise UsageError(f"No tenant {tenant!r}. Create one with: manage.py createtenant {tenant} --profile Interactive") from None
        code, name, record = self.block_to_run(file, tenant_obj, options)
        if options.get("check"):
            return self.check_block(code, name, as_json)
        try:
            block_input = json.loads(input) if input is not None else None
        except ValueError as e:
            raise UsageError(f"--input is not valid JSON: {e}") from None

        server = local_server()
        started = time.monotonic()
        try:
            run = server.call(self.run_block(server, tenant_obj, code, name, block_input, record))
        except RunRefused as e:
            self.stderr.write(f"Run refused [{e.code}]: {e.message}")
            self.exit(1)
        except KeyboardInterrupt:
            self.stderr.write("Interrupted: the run was stopped.")
            self.exit(1)

        ok = run.status == "succeeded"
        if as_json:
            error = run_error(run)
            self.stdout.write(json.dumps({
                "status": run.status,
                "result": run.result,
                "error": error,
                # From the run's record, complete: the live lines (on stderr) are shown
                # as they come, and a run printing faster than they can be sent skips
                # some there (isolates/runevents.py). Each is {level, text, ms}, as the
                # API's logs are.
                "logs": run.console_entries(),
                "stats": {
                    "run": run.id,
                    "durationMs": round((run.duration or (time.monotonic() - started)) * 1000, 1),
                    "calls": run.calls,
                    "bytesIn": run.bytes_in,
                    "bytesOut": run.bytes_out,
                    "peakMemoryBytes": run.peak_memory_bytes,
                    "cpuMs": run.cpu_ms,
                    "consoleTruncated": run.console_truncated,
                },
            }))
        else:
            if ok:
                if run.result is not None:
                    self.stdout.write(run.result if isinstance(run.result, str) else json.dumps(run.result, indent=2))
            else:
                self.stderr.write(f"Run {run.id} {run.get_status_display().lower()} [{run.error_code}]: {run.error}")
                # Where the block failed: file:line:col, the code line with a caret, the frames.
                where = format_error(run_error(run))
                if where:
                    self.stderr.write(where)
        self.exit(0 if ok else 1)

    def check_block(self, code, name, as_json):
        if not is_typescript(name):
            raise UsageError(f"--check checks TypeScript blocks; {name} is not one (name it .ts).")
        try:
            report = asyncio.run(check_types(code, name))
        except TypeCheckError as e:
            self.stderr.write(f"Type check failed [{e.code}]: {e.message}")
            self.exit(1)
        if as_json:
            self.stdout.write(json.dumps(report))
        else:
            lines = code.split("\n")
            for diagnostic in report["diagnostics"]:
                self.stderr.write(format_diagnostic(diagnostic))
                if diagnostic["file"] == name and diagnostic["line"] and diagnostic["line"] <= len(lines):
                    self.stderr.write(code_frame(code, diagnostic["line"], diagnostic["column"]))
            errors = sum(d["severity"] == "error" for d in report["diagnostics"])
            self.stderr.write(f"{name}: no type errors." if not errors else f"{name}: {errors} type error{'s' if errors > 1 else ''}.")
        self.exit(0 if report["ok"] else 1)

    def exit(self, status):
        sys.stdout.flush()
        sys.stderr.flush()
        # The in-process server's threads are daemons; leave without waiting for them.
        os._exit(status)

    def read_block(self, file):
        if file == "-":
            return sys.stdin.read(), "stdin.js"
        path = Path(file)
        try:
            return path.read_text(), path.name
        except FileNotFoundError:
            raise UsageError(f"No such file: {file}") from None
        except IsADirectoryError:
            raise UsageError(f"{file} is a folder, not a block file.") from None
        except UnicodeDecodeError:
            raise UsageError(f"{file} is not UTF-8 text.") from None

    def block_to_run(self, file, tenant, options):
        """The code to run, its file name, and what the run's record names besides (the
        saved block and version: blocks' runblock, which extends this one, says)."""
        if file is None:
            raise UsageError("Name the block's file, or - to read it from stdin.")
        code, name = self.read_block(file)
        return code, name, {}

    async def run_block(self, server, tenant, code, name, block_input, record):
        service = service_for_port(server.port)
        layer = get_channel_layer()
        channel = await layer.new_channel()
        run = await service.start(tenant, code, name=name, input=block_input, source="runblock", **record)
        await layer.group_add(run_group(run.id), channel)

        async def stream():
            while True:
                message = await layer.receive(channel)
                if message.get("type") != "run.event":
                    continue
                if message["event"] == "log":
                    self.stderr.write(message["text"], ending="\n")
                    self.stderr.flush()
                elif message["event"] == "finished":
                    return

        streamer = asyncio.ensure_future(stream())
        try:
            finished = await service.wait(run.id)
            try:
                await asyncio.wait_for(streamer, 2)
            except asyncio.TimeoutError:
                pass
            return finished
        finally:
            streamer.cancel()
            await layer.group_discard(run_group(run.id), channel)

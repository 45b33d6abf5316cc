"""The operations a block can call: each one described once, here.

An `Operation` says everything the platform needs to know about a call besides running
it: which capability it belongs to, whether it changes what the tenant has stored,
whether it is safe to run twice, what its audit row names as its target, which policy
checks are its own, and what else it reports (audit rows of each attempt, events for
whoever watches the run). The policy (tenants.policy.decide), the broker and the
isolate's runtime all read these; none of them knows an operation by name.

The broker dispatches only what is named here: an operation a block sends that is not a
key of OPERATIONS is refused, never looked up by name on a module. The runtime learns
the names and their capabilities from the broker's start frame (OPERATION_CAPABILITIES).
"""

from dataclasses import dataclass
from typing import Callable

from capabilities import canvas, database, email, files, image, kv, network, process, realtime
from tenants import policy


def argument(name):
    """An audit target that is one argument as the block gave it (a path, a canvas id, a
    command name); anything but a string or a number is no target."""

    def target(args):
        value = args.get(name)
        return value if isinstance(value, (str, int)) else ""

    return target


def no_target(args):
    return ""


@dataclass(frozen=True)
class Operation:
    name: str
    capability: str
    handler: Callable
    # Changes what the tenant has stored (writes or deletes): a profile with read-only
    # access to the capability refuses it.
    writes: bool = False
    # Safe to run twice (a read): the dispatcher may retry it on another worker when
    # the first one died mid-call.
    idempotent: bool = False
    # The audit log's "target", read from the call's arguments: what the call was about.
    # Never a payload or a secret (a statement is fingerprinted, a URL is its host).
    audit_target: Callable[[dict], str | int] = no_target
    # Checks of tenants.policy particular to this operation, made after the ones every
    # call of its capability gets: each returns a Decision.
    policy_checks: tuple = ()
    # Rows a reply reports besides the call's own (reply -> [{outcome, error_code,
    # message, duration_ms}]), recorded as "<name>.attempt" under the call's target.
    attempt_rows: Callable[[dict], list] | None = None
    # An event for whoever watches the run, made from a successful call's envelope (or
    # None for no event), published after the call's own event.
    watch_event: Callable[[dict], dict | None] | None = None
    # Answered on the server's event loop rather than a handler thread, when the call runs
    # inline and settings.SYMPOSIUM_CALLS_ON_LOOP: only for handlers that never wait on
    # anything but a few metadata system calls on the local disk (no data read, no
    # database, no network, bounded work), for which the thread hop cost more than the
    # handler (docs/broker.md).
    on_loop: bool = False


OPERATIONS = {
    op.name: op
    for op in [
        Operation("readFile", "files", files.read_file, idempotent=True, audit_target=argument("path")),
        Operation("writeFile", "files", files.write_file, writes=True, audit_target=argument("path"),
                  policy_checks=(policy.check_file_write,)),
        Operation("listDirectory", "files", files.list_directory, idempotent=True, audit_target=argument("path")),
        Operation("getFileInfo", "files", files.get_file_info, idempotent=True, audit_target=argument("path"),
                  on_loop=True),
        Operation("fileExists", "files", files.file_exists, idempotent=True, audit_target=argument("path"),
                  on_loop=True),
        Operation("deleteFile", "files", files.delete_file, writes=True, audit_target=argument("path")),
        Operation("network.fetch", "network", network.fetch, audit_target=network.url_host),
        Operation("network.sendWebhook", "network", network.send_webhook, audit_target=network.url_host,
                  attempt_rows=network.delivery_attempt_rows),
        Operation("canvas.createCanvas", "canvas", canvas.create_canvas, policy_checks=(policy.check_canvas_size,)),
        Operation("canvas.draw", "canvas", canvas.draw, audit_target=argument("canvasId")),
        Operation("canvas.exportImage", "canvas", canvas.export_image, audit_target=argument("canvasId"),
                  policy_checks=(policy.check_export_format,), watch_event=canvas.image_event),
        Operation("database.query", "database", database.query, audit_target=database.statement_fingerprint),
        Operation("database.transaction", "database", database.transaction),
        Operation("process.execute", "process", process.execute, audit_target=argument("command")),
        Operation("kv.get", "kv", kv.kv_get, idempotent=True, audit_target=argument("key")),
        Operation("kv.set", "kv", kv.kv_set, writes=True, audit_target=argument("key")),
        Operation("kv.delete", "kv", kv.kv_delete, writes=True, idempotent=True, audit_target=argument("key")),
        Operation("kv.list", "kv", kv.kv_list, idempotent=True, audit_target=argument("prefix")),
        Operation("email.send", "email", email.email_send, writes=True, audit_target=argument("subject")),
        Operation("image.info", "image", image.image_info, idempotent=True, audit_target=argument("path")),
        Operation("image.transform", "image", image.image_transform, writes=True, audit_target=argument("output")),
        Operation("realtime.publish", "realtime", realtime.realtime_publish, audit_target=argument("channel")),
    ]
}

# What the isolate's runtime needs: the names a block can call, and the capability each
# error of theirs names. Sent in the broker's start frame.
OPERATION_CAPABILITIES = {name: op.capability for name, op in OPERATIONS.items()}

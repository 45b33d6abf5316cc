"""The one map from operation names to handlers.

The broker dispatches only what is named here: an operation a block sends that is not a
key of OPERATIONS is refused, never looked up by name on a module.
"""

from dataclasses import dataclass
from typing import Callable

from capabilities import canvas, database, email, files, image, kv, network, process, realtime
from tenants.policy import OPERATION_CAPABILITY


@dataclass(frozen=True)
class Operation:
    name: str
    capability: str
    handler: Callable
    # The audit log's "target": what the call was about, from its arguments. Never a
    # payload or a secret; handlers that know better (a statement fingerprint) say so.
    target_arg: str | None = None
    # Safe to run twice (a read): the dispatcher may retry it on another worker when
    # the first one died mid-call.
    idempotent: bool = False


OPERATIONS = {
    op.name: op
    for op in [
        Operation("readFile", "files", files.read_file, "path", idempotent=True),
        Operation("writeFile", "files", files.write_file, "path"),
        Operation("listDirectory", "files", files.list_directory, "path", idempotent=True),
        Operation("getFileInfo", "files", files.get_file_info, "path", idempotent=True),
        Operation("fileExists", "files", files.file_exists, "path", idempotent=True),
        Operation("deleteFile", "files", files.delete_file, "path"),
        Operation("network.fetch", "network", network.fetch, "url"),
        Operation("network.sendWebhook", "network", network.send_webhook, "url"),
        Operation("canvas.createCanvas", "canvas", canvas.create_canvas),
        Operation("canvas.draw", "canvas", canvas.draw, "canvasId"),
        Operation("canvas.exportImage", "canvas", canvas.export_image, "canvasId"),
        Operation("database.query", "database", database.query, "sql"),
        Operation("database.transaction", "database", database.transaction),
        Operation("process.execute", "process", process.execute, "command"),
        Operation("kv.get", "kv", kv.kv_get, "key", idempotent=True),
        Operation("kv.set", "kv", kv.kv_set, "key"),
        Operation("kv.delete", "kv", kv.kv_delete, "key", idempotent=True),
        Operation("kv.list", "kv", kv.kv_list, "prefix", idempotent=True),
        Operation("email.send", "email", email.email_send, "subject"),
        Operation("image.info", "image", image.image_info, "path", idempotent=True),
        Operation("image.transform", "image", image.image_transform, "output"),
        Operation("realtime.publish", "realtime", realtime.realtime_publish, "channel"),
    ]
}

assert {name: op.capability for name, op in OPERATIONS.items()} == OPERATION_CAPABILITY

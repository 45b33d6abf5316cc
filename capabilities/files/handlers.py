"""The file operations of a block: readFile, writeFile, listDirectory, getFileInfo,
fileExists, deleteFile, on the tenant's own storage.

Every path is a tenant path (capabilities.files.paths) opened beneath the tenant's root
without following links (capabilities.files.beneath). Messages name the tenant path the
block gave, never the folder it lives in on the server.
"""

import errno
import os
import secrets
import shutil
import stat
from datetime import datetime, timezone

from capabilities.base import CapabilityError
from capabilities.files import quota
from capabilities.files.beneath import (
    O_DIR,
    first_non_folder,
    make_dirs_beneath,
    open_beneath,
    open_storage_root,
    opened,
)
from capabilities.files.content import check_content_allowed
from capabilities.files.paths import TEMP_PREFIX, is_hidden_name, parse_tenant_path

# A listing returns at most this many entries (the first ones by name) and says so with
# `truncated`; a folder of a million files would otherwise be a reply of a hundred MB.
LIST_MAX_ENTRIES = 10000
READ_CHUNK = 1024 * 1024
# Said when a call's deadline passed before its operation began (it did nothing).
NOT_STARTED = "The call's time ran out before the file operation started."


# -- helpers -------------------------------------------------------------------------


def _check_access(ctx, writing):
    # decide() has already said yes; a handler that runs anyway (a bug in the broker, a
    # job replayed after a policy change) must not do more than the policy allows.
    access = ctx.policy.files_access
    profile = ctx.policy.profile_name or "tenant's"
    if access == "none":
        raise CapabilityError("PERMISSION_DENIED", f"The {profile} profile does not allow file access.")
    if writing and access not in ("write", "all"):
        raise CapabilityError(
            "PERMISSION_DENIED", f"The {profile} profile does not allow writing or deleting files (read-only access)."
        )


def _storage_error(error, tenant_path, root_fd=None):
    """The CapabilityError for an OSError met on `tenant_path` (no server path in it)."""
    where = tenant_path.display
    code = error.errno
    if code == errno.ENOTDIR and root_fd is not None:
        # The kernel says "not a folder" both for a file and for a link met where a folder
        # was expected; which one it was decides the answer.
        blocker = first_non_folder(root_fd, tenant_path.parts)
        if blocker == "link":
            code = errno.ELOOP
    if code in (errno.ENOENT, errno.ENOTDIR):
        return CapabilityError("NOT_FOUND", f"No file or folder at '{where}'.")
    if code in (errno.ELOOP, errno.EXDEV):
        return CapabilityError(
            "PERMISSION_DENIED", f"'{where}' leads through a symbolic link or mount point; they are never followed."
        )
    if code in (errno.EACCES, errno.EPERM):
        return CapabilityError("PERMISSION_DENIED", f"The server does not allow access to '{where}'.")
    if code == errno.EISDIR:
        return CapabilityError("INVALID_ARGUMENT", f"'{where}' is a folder, not a file.")
    if code in (errno.ENOSPC, errno.EDQUOT):
        return CapabilityError("QUOTA_EXCEEDED", f"The server's storage is full; '{where}' was not changed.")
    if code == errno.EFBIG:
        return CapabilityError("QUOTA_EXCEEDED", f"'{where}' would be larger than the server allows for one file.")
    if code == errno.ENAMETOOLONG:
        return CapabilityError("INVALID_ARGUMENT", f"'{where}' is too long a path.")
    if code == errno.EROFS:
        return CapabilityError("PERMISSION_DENIED", "The tenant's storage is read-only on this server.")
    return CapabilityError("INTERNAL", f"The file operation on '{where}' failed: {os.strerror(code)}.")


def _iso_time(timestamp):
    # The same form as JavaScript's Date.prototype.toISOString(), so `new Date(modified)`
    # reads it back exactly.
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _kind(st):
    if stat.S_ISREG(st.st_mode):
        return "file"
    if stat.S_ISDIR(st.st_mode):
        return "directory"
    if stat.S_ISLNK(st.st_mode):
        return "link"
    return "other"


def _describe(tenant_path, st):
    kind = _kind(st)
    return {
        "name": tenant_path.name,
        "path": tenant_path.display,
        "type": kind,
        # A folder's own size on disk (4096 on ext4) means nothing to a block author.
        "size": st.st_size if kind == "file" else 0,
        "modified": _iso_time(st.st_mtime),
    }


def _refuse_link_or_special(tenant_path, st):
    kind = _kind(st)
    if kind == "link":
        raise CapabilityError(
            "PERMISSION_DENIED", f"'{tenant_path.display}' is a symbolic link; links in storage are never followed."
        )
    if kind == "other":
        raise CapabilityError("PERMISSION_DENIED", f"'{tenant_path.display}' is not a regular file or folder.")


def _stat_entry(root_fd, tenant_path):
    """lstat of `tenant_path` (never following a link), its parent opened beneath the root."""
    if tenant_path.is_root:
        return os.fstat(root_fd)
    with opened(open_beneath(root_fd, tenant_path.parent.parts, O_DIR)) as parent_fd:
        return os.stat(tenant_path.name, dir_fd=parent_fd, follow_symlinks=False)


def _read_at_most(fd, limit):
    chunks, total = [], 0
    while total <= limit:
        chunk = os.read(fd, min(READ_CHUNK, limit + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def _encoding(args):
    encoding = args.get("encoding")
    if encoding is None:
        return "utf-8"
    if isinstance(encoding, str) and encoding.lower() in ("utf-8", "utf8"):
        return "utf-8"
    if isinstance(encoding, str) and encoding.lower() == "binary":
        return "binary"
    raise CapabilityError("INVALID_ARGUMENT", "The encoding must be 'utf-8' (text, the default) or 'binary' (bytes).")


# -- handlers ------------------------------------------------------------------------


def read_file(ctx, args):
    tenant_path = parse_tenant_path(args.get("path"))
    encoding = _encoding(args)
    _check_access(ctx, writing=False)
    ctx.check_deadline(NOT_STARTED)
    if tenant_path.reserved:
        # The platform's folders are invisible: the same answer as for a missing file.
        raise CapabilityError("NOT_FOUND", f"No file or folder at '{tenant_path.display}'.")
    limit = ctx.policy.max_file_size
    with opened(open_storage_root(ctx)) as root_fd:
        try:
            # O_NONBLOCK: a FIFO planted in storage must not hang the call in open().
            fd = open_beneath(root_fd, tenant_path.parts, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            raise _storage_error(e, tenant_path, root_fd) from None
        with opened(fd):
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise CapabilityError("INVALID_ARGUMENT", f"'{tenant_path.display}' is a folder; list it with listDirectory.")
            if not stat.S_ISREG(st.st_mode):
                raise CapabilityError("PERMISSION_DENIED", f"'{tenant_path.display}' is not a regular file.")
            too_large = CapabilityError(
                "QUOTA_EXCEEDED",
                f"'{tenant_path.display}' is {st.st_size} bytes; the largest file this tenant may read is {limit} bytes.",
            )
            # Refused from its size before a byte is read, and again if it grew meanwhile.
            if st.st_size > limit:
                raise too_large
            try:
                raw = _read_at_most(fd, limit)
            except OSError as e:
                raise _storage_error(e, tenant_path) from None
            if len(raw) > limit:
                raise too_large
    if encoding == "binary":
        data = raw
    else:
        try:
            data = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CapabilityError(
                "INVALID_ARGUMENT",
                f"'{tenant_path.display}' is not UTF-8 text; read it with {{encoding: 'binary'}} to get its bytes.",
            ) from None
        # TextDecoder in the browser and Deno drops a leading byte-order mark; so do we,
        # so that JSON.parse(result.data) works on files saved by Windows editors.
        data = data.removeprefix("\ufeff")
    return {
        "data": data,
        "size": len(raw),
        "encoding": encoding,
        "path": tenant_path.display,
        "modified": _iso_time(st.st_mtime),
    }


def write_file(ctx, args):
    tenant_path = parse_tenant_path(args.get("path"))
    if tenant_path.is_root:
        raise CapabilityError("INVALID_ARGUMENT", "A file name is required.")
    _check_access(ctx, writing=True)
    if tenant_path.reserved:
        raise CapabilityError("PERMISSION_DENIED", f"Cannot write '{tenant_path.display}': {tenant_path.reserved}.")
    data = args.get("data")
    if isinstance(data, str):
        try:
            data = data.encode("utf-8")
        except UnicodeEncodeError:
            raise CapabilityError("INVALID_ARGUMENT", "The data is not valid Unicode text.") from None
    elif isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data)
    else:
        raise CapabilityError("INVALID_ARGUMENT", "The data must be a string or a Uint8Array.")
    size = len(data)
    policy = ctx.policy
    if size > policy.max_file_size:
        raise CapabilityError(
            "QUOTA_EXCEEDED",
            f"The file is {size} bytes; the largest file this tenant may write is {policy.max_file_size} bytes.",
        )
    check_content_allowed(policy, tenant_path, data)
    ctx.check_deadline(NOT_STARTED)

    with opened(open_storage_root(ctx)) as root_fd, quota.storage_lock(ctx, root_fd):
        try:
            parent_fd = open_beneath(root_fd, tenant_path.parent.parts, O_DIR)
        except FileNotFoundError:
            parent_fd = None  # made below, once the quota allows the write
        except OSError as e:
            raise _folder_error(e, tenant_path, root_fd) from None
        try:
            old_size = 0
            if parent_fd is not None:
                try:
                    st = os.stat(tenant_path.name, dir_fd=parent_fd, follow_symlinks=False)
                except FileNotFoundError:
                    pass
                else:
                    if stat.S_ISDIR(st.st_mode):
                        raise CapabilityError("INVALID_ARGUMENT", f"'{tenant_path.display}' is a folder, not a file.")
                    _refuse_link_or_special(tenant_path, st)
                    # Another name for the same file (a hard link) frees nothing when replaced.
                    old_size = st.st_size if st.st_nlink == 1 else 0

            usage = quota.current_usage(ctx, root_fd)
            after = usage - old_size + size
            # A write that does not grow the storage is allowed even over the quota (a
            # process may have passed it): it is how a tenant shrinks its files.
            if after > policy.storage_quota and size > old_size:
                raise CapabilityError(
                    "QUOTA_EXCEEDED",
                    f"Writing '{tenant_path.display}' ({size} bytes) would bring the tenant's storage to {after} bytes; "
                    f"the quota is {policy.storage_quota} bytes ({usage} in use).",
                )
            if parent_fd is None:
                try:
                    parent_fd = make_dirs_beneath(root_fd, tenant_path.parent.parts)
                except OSError as e:
                    raise _folder_error(e, tenant_path, root_fd) from None
            try:
                _replace_atomically(parent_fd, tenant_path.name, data)
            except OSError as e:
                raise _storage_error(e, tenant_path) from None
            quota.record_change(ctx, usage, size - old_size)
        finally:
            if parent_fd is not None:
                os.close(parent_fd)
    return {"data": {"path": tenant_path.display, "size": size}, "path": tenant_path.display, "size": size}


def _folder_error(error, tenant_path, root_fd):
    if error.errno == errno.ENOTDIR and first_non_folder(root_fd, tenant_path.parent.parts) == "file":
        return CapabilityError("INVALID_ARGUMENT", f"A folder on the way to '{tenant_path.display}' is a file.")
    return _storage_error(error, tenant_path, root_fd)


def _replace_atomically(parent_fd, name, data):
    """Write `data` to `name` in the folder `parent_fd` so that readers see the old file
    or the whole new one, never a part: a temporary file in the same folder, flushed to
    disk, then renamed over the name. On any error (a full disk) the temporary file is
    removed and the old file is untouched."""
    temp_name = f"{TEMP_PREFIX}{secrets.token_hex(8)}"
    fd = os.open(temp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=parent_fd)
    try:
        try:
            # A file the API writes is plain data: no set-id, sticky or execute bit, whatever
            # the server's umask or the file it replaces had (a set-uid file in storage is
            # one on the server's disk).
            os.fchmod(fd, 0o644)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp_name, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
    except BaseException:
        try:
            os.unlink(temp_name, dir_fd=parent_fd)
        except OSError:
            pass
        raise
    # The rename itself is durable only once the folder is flushed too.
    os.fsync(parent_fd)


def list_directory(ctx, args):
    tenant_path = parse_tenant_path(args.get("path"))
    _check_access(ctx, writing=False)
    ctx.check_deadline(NOT_STARTED)
    if tenant_path.reserved:
        raise CapabilityError("NOT_FOUND", f"No folder at '{tenant_path.display}'.")
    entries = []
    with opened(open_storage_root(ctx)) as root_fd:
        try:
            fd = open_beneath(root_fd, tenant_path.parts, O_DIR)
        except OSError as e:
            if e.errno == errno.ENOTDIR and first_non_folder(root_fd, tenant_path.parts) == "file":
                raise CapabilityError(
                    "INVALID_ARGUMENT", f"'{tenant_path.display}' is a file, not a folder; use getFileInfo or readFile."
                ) from None
            raise _storage_error(e, tenant_path, root_fd) from None
        with opened(fd), os.scandir(fd) as scan:
            for entry in scan:
                name = entry.name
                if is_hidden_name(name, at_root=tenant_path.is_root):
                    continue
                try:
                    name.encode("utf-8")
                except UnicodeEncodeError:
                    # A name that is not UTF-8 (made by a process) cannot be named back
                    # through this API, so it is not offered.
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # deleted while we listed
                # Only what a block can open is listed: links and devices are left out.
                if _kind(st) in ("file", "directory"):
                    entries.append(_describe(tenant_path.child(name), st))
    entries.sort(key=lambda e: e["name"])
    total = len(entries)
    truncated = total > LIST_MAX_ENTRIES
    return {
        "data": entries[:LIST_MAX_ENTRIES],
        "path": tenant_path.display,
        "count": min(total, LIST_MAX_ENTRIES),
        "total": total,
        "truncated": truncated,
    }


def get_file_info(ctx, args):
    tenant_path = parse_tenant_path(args.get("path"))
    _check_access(ctx, writing=False)
    ctx.check_deadline(NOT_STARTED)
    if tenant_path.reserved:
        raise CapabilityError("NOT_FOUND", f"No file or folder at '{tenant_path.display}'.")
    with opened(open_storage_root(ctx)) as root_fd:
        try:
            st = _stat_entry(root_fd, tenant_path)
        except OSError as e:
            raise _storage_error(e, tenant_path, root_fd) from None
    _refuse_link_or_special(tenant_path, st)
    info = _describe(tenant_path, st)
    return {"data": info, "size": info["size"], "modified": info["modified"], "type": info["type"]}


def file_exists(ctx, args):
    """True for a file or folder the block could open; false for anything else: missing,
    the platform's folders, a link (never followed), a path through a file."""
    tenant_path = parse_tenant_path(args.get("path"))
    _check_access(ctx, writing=False)
    ctx.check_deadline(NOT_STARTED)
    if tenant_path.reserved:
        return {"data": False}
    with opened(open_storage_root(ctx)) as root_fd:
        try:
            st = _stat_entry(root_fd, tenant_path)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EXDEV, errno.EACCES):
                return {"data": False}
            raise _storage_error(e, tenant_path) from None
    return {"data": _kind(st) in ("file", "directory")}


def delete_file(ctx, args):
    """Deletes a file, a link (the link itself, never its target), or a folder: an empty
    one for any profile that writes, one with contents only with 'all' file access."""
    tenant_path = parse_tenant_path(args.get("path"))
    _check_access(ctx, writing=True)
    if tenant_path.is_root:
        raise CapabilityError("PERMISSION_DENIED", "The storage root itself cannot be deleted.")
    if tenant_path.reserved:
        raise CapabilityError("PERMISSION_DENIED", f"Cannot delete '{tenant_path.display}': {tenant_path.reserved}.")
    ctx.check_deadline(NOT_STARTED)
    name = tenant_path.name
    with opened(open_storage_root(ctx)) as root_fd, quota.storage_lock(ctx, root_fd):
        try:
            parent_fd = open_beneath(root_fd, tenant_path.parent.parts, O_DIR)
        except OSError as e:
            raise _storage_error(e, tenant_path, root_fd) from None
        with opened(parent_fd):
            try:
                st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
                kind = _kind(st)
                if kind == "directory":
                    _delete_folder(ctx, parent_fd, tenant_path)
                else:
                    os.unlink(name, dir_fd=parent_fd)
            except OSError as e:
                raise _storage_error(e, tenant_path, root_fd) from None
    if kind == "file" and st.st_nlink == 1:
        quota.adjust_cached_usage(ctx, -st.st_size)
    elif kind != "link":
        quota.forget_usage(ctx)
    return {"data": {"path": tenant_path.display, "type": kind}, "path": tenant_path.display}


def _delete_folder(ctx, parent_fd, tenant_path):
    try:
        os.rmdir(tenant_path.name, dir_fd=parent_fd)
        return
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    if ctx.policy.files_access != "all":
        raise CapabilityError(
            "PERMISSION_DENIED",
            f"'{tenant_path.display}' is a folder that is not empty; the {ctx.policy.profile_name or 'tenant'} "
            "profile deletes only files and empty folders.",
        )
    # shutil.rmtree with dir_fd works by descriptor and never follows a link
    # (rmtree.avoids_symlink_attacks is true on Linux): a link inside is removed, its
    # target is left alone.
    shutil.rmtree(tenant_path.name, dir_fd=parent_fd)

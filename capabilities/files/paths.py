"""Tenant paths: what a block may name, checked before anything touches the disk.

A tenant path is a string of '/'-separated names relative to the tenant's storage root.
'' and '/' are the root itself; a leading '/' means the tenant's root, never the server's.
Nothing is ever decoded: '%2e%2e' is a file literally named '%2e%2e', a fullwidth
'．．' is a name of two fullwidth dots, and a backslash is refused rather than guessed
at. What the block sent is exactly what the kernel sees, so there is no second
interpretation of the path for an attacker to exploit.

This module only checks the text. Symbolic links, which the text cannot reveal, are
stopped when the path is opened (capabilities.files.beneath).
"""

from dataclasses import dataclass

from capabilities.base import CapabilityError

# Linux's own limits (NAME_MAX, and PATH_MAX with room for the storage root's prefix).
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 1024

# The folder at the tenant's root where the platform keeps the tenant's SQLite database
# and its locks. Blocks can neither see nor touch it through the file API.
PLATFORM_FOLDER = ".symposium"

# Inside process.execute the tenant's storage is the sandbox's '/', with the system's
# folders mounted over these names (capabilities.process.sandbox). A tenant file stored
# under one of them would be hidden from every process, so the names are reserved at the
# top level for every tenant: the same path then means the same thing to the file API
# and to a process.
SANDBOX_SYSTEM_FOLDERS = ("bin", "dev", "etc", "lib", "lib64", "proc", "tmp", "usr")

# writeFile writes to a temporary name in the target's folder and renames it into place.
# Names with this prefix are the platform's, in any folder: never listed, never opened.
TEMP_PREFIX = ".symposium-tmp-"


@dataclass(frozen=True)
class TenantPath:
    parts: tuple  # the names, in order; () for the root

    @property
    def is_root(self):
        return not self.parts

    @property
    def display(self):
        """The path as the block should see it in messages and replies."""
        return "/".join(self.parts) if self.parts else "/"

    @property
    def name(self):
        return self.parts[-1] if self.parts else ""

    @property
    def parent(self):
        return TenantPath(self.parts[:-1])

    def child(self, name):
        return TenantPath(self.parts + (name,))

    @property
    def reserved(self):
        """Why the platform keeps this path for itself, or '' when the tenant may use it."""
        if not self.parts:
            return ""
        first = self.parts[0].lower()
        if first == PLATFORM_FOLDER:
            return f"'{PLATFORM_FOLDER}' is reserved for the platform"
        if first in SANDBOX_SYSTEM_FOLDERS:
            return f"'/{first}' is a system folder inside processes and cannot hold tenant files"
        if any(part.lower().startswith(TEMP_PREFIX) for part in self.parts):
            return f"names starting with '{TEMP_PREFIX}' are reserved for the platform"
        return ""


def is_hidden_name(name, at_root):
    """Whether a directory entry is the platform's and must not appear in a listing."""
    lowered = name.lower()
    if lowered.startswith(TEMP_PREFIX):
        return True
    return at_root and (lowered == PLATFORM_FOLDER or lowered in SANDBOX_SYSTEM_FOLDERS)


def parse_tenant_path(value, what="path"):
    """The TenantPath for a block's argument, or INVALID_ARGUMENT saying what is wrong."""
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise CapabilityError("INVALID_ARGUMENT", f"The {what} must be a string.")
    if "\x00" in value:
        raise CapabilityError("INVALID_ARGUMENT", f"The {what} contains a NUL character.")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value):
        raise CapabilityError("INVALID_ARGUMENT", f"The {what} contains a control character.")
    if "\\" in value:
        raise CapabilityError("INVALID_ARGUMENT", f"The {what} contains a backslash; separate folders with '/'.")
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate from JSON ("\ud800") has no UTF-8 form and no file name.
        raise CapabilityError("INVALID_ARGUMENT", f"The {what} is not valid Unicode text.") from None
    if len(encoded) > MAX_PATH_BYTES:
        raise CapabilityError("INVALID_ARGUMENT", f"The {what} is longer than {MAX_PATH_BYTES} bytes.")
    parts = []
    for part in value.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise CapabilityError("INVALID_ARGUMENT", f"The {what} may not contain '..'; paths stay inside your storage.")
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            raise CapabilityError("INVALID_ARGUMENT", f"A name in the {what} is longer than {MAX_NAME_BYTES} bytes.")
        parts.append(part)
    return TenantPath(tuple(parts))

"""What a block may not store unless its profile has 'all' file access: files whose name
ends in a blocked extension, and programs whatever their name.

Names are checked the way a desktop that later downloads the file would read them:
Windows ignores trailing dots and spaces, so 'report.exe.' and 'report.exe ' are .exe
files. Content is recognised by the magic numbers the loaders themselves check.
"""

from capabilities.base import CapabilityError

MACH_O_MAGICS = {
    b"\xfe\xed\xfa\xce",  # 32-bit, big-endian
    b"\xfe\xed\xfa\xcf",  # 64-bit, big-endian
    b"\xce\xfa\xed\xfe",  # 32-bit, little-endian
    b"\xcf\xfa\xed\xfe",  # 64-bit, little-endian
    b"\xca\xfe\xba\xbe",  # universal ("fat") binary; also a Java class file
    b"\xca\xfe\xba\xbf",  # 64-bit universal binary
}
UTF8_BOM = b"\xef\xbb\xbf"


def blocked_extension(name, blocked_extensions):
    """The blocked extension `name` ends with, or None."""
    lowered = name.lower().rstrip(". ")
    for ext in blocked_extensions:
        if lowered.endswith(ext.lower()):
            return ext
    return None


def executable_kind(data: bytes):
    """A description of the program `data` is, or None when it is not one."""
    if data.startswith(b"\x7fELF"):
        return "an ELF program"
    if data[:4] in MACH_O_MAGICS:
        return "a Mach-O program"
    if data.startswith(b"#!") or data.startswith(UTF8_BOM + b"#!"):
        return "a script starting with #!"
    if data.startswith(b"MZ") and _looks_like_dos_executable(data):
        return "a Windows (PE/MZ) program"
    return None


def _looks_like_dos_executable(data):
    # 'MZ' alone is also how a CSV about Mozambique can start. A PE file has the 'PE\0\0'
    # signature where the DOS header's e_lfanew points; an old DOS program has a binary
    # header (zero bytes among its first 64). Text has neither.
    if len(data) >= 0x40:
        offset = int.from_bytes(data[0x3C:0x40], "little")
        if data[offset : offset + 4] == b"PE\x00\x00":
            return True
    return any(byte < 0x09 for byte in data[2:0x40])


def check_content_allowed(policy, tenant_path, data):
    """PERMISSION_DENIED when the profile does not let this file be written."""
    if policy.files_access == "all":
        return
    profile = policy.profile_name or "tenant's"
    ext = blocked_extension(tenant_path.name, policy.blocked_extensions)
    if ext:
        raise CapabilityError(
            "PERMISSION_DENIED", f"The {profile} profile does not allow writing {ext} files ('{tenant_path.display}')."
        )
    kind = executable_kind(data)
    if kind:
        raise CapabilityError(
            "PERMISSION_DENIED",
            f"The data for '{tenant_path.display}' is executable content ({kind}); "
            f"the {profile} profile does not allow storing programs or scripts.",
        )

"""Image files as drawImage sources: tenant paths opened safely, decoded with bounds.

SECURITY: this module opens files on behalf of untrusted blocks. It reads them exactly
as the files capability does, with its code: the path is a tenant path checked by
capabilities.files.paths ('..', NUL, backslashes refused with INVALID_ARGUMENT; the
platform's reserved folders invisible), and the file is opened beneath the tenant's
storage root by capabilities.files.beneath, which never follows a symbolic link (a link
planted in storage is refused with PERMISSION_DENIED, as readFile refuses it). Reading
needs the profile's file access, so a canvas cannot read what readFile could not. Only
regular files are read, only the plain raster formats in limits.IMAGE_FILE_FORMATS are
decoded (Pillow knows others that run external programs), and an image's pixel count is
read from its header and bounded before it is decoded.
"""

import errno
import os
import stat

import numpy
from PIL import Image, UnidentifiedImageError

from capabilities.base import CapabilityError
from capabilities.canvas import limits
from capabilities.files.beneath import open_beneath, open_storage_root, opened
from capabilities.files.paths import parse_tenant_path


def _fail(index, code, message):
    return CapabilityError(code, f"ops[{index}].path: {message}")


def tenant_path(ctx, index, path):
    """The checked TenantPath of a drawImage source, or the error saying why not."""
    if ctx.policy.files_access == "none":
        raise _fail(index, "PERMISSION_DENIED", f"The {ctx.policy.profile_name or 'tenant'} profile does not allow file access, so drawImage cannot read files.")
    try:
        parsed = parse_tenant_path(path)
    except CapabilityError as e:
        raise _fail(index, e.code, e.message) from None
    if parsed.is_root:
        raise _fail(index, "INVALID_ARGUMENT", "A file path is required.")
    if parsed.reserved:
        raise _fail(index, "NOT_FOUND", f"No file at '{parsed.display}'.")
    return parsed


def _max_bytes(ctx):
    return min(limits.MAX_IMAGE_FILE_BYTES, ctx.policy.max_file_size)


def open_tenant_file(ctx, index, path):
    """A regular file under the tenant's storage root, opened for reading without
    following any symbolic link; the caller closes it."""
    parsed = tenant_path(ctx, index, path)
    with opened(open_storage_root(ctx)) as root_fd:
        try:
            # O_NONBLOCK: opening a FIFO planted in storage must not wait for a writer.
            fd = open_beneath(root_fd, parsed.parts, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            raise _open_error(index, parsed.display, e) from None
    file = os.fdopen(fd, "rb")
    info = os.fstat(file.fileno())
    max_bytes = _max_bytes(ctx)
    if not stat.S_ISREG(info.st_mode):
        file.close()
        raise _fail(index, "INVALID_ARGUMENT", f"'{parsed.display}' is not a file.")
    if info.st_size > max_bytes:
        file.close()
        raise _fail(index, "QUOTA_EXCEEDED", f"'{parsed.display}' is {info.st_size} bytes; images up to {max_bytes} bytes can be drawn.")
    return file


def _open_error(index, where, error):
    if error.errno in (errno.ELOOP, errno.EXDEV):
        return _fail(index, "PERMISSION_DENIED", f"'{where}' leads through a symbolic link or mount point; they are never followed.")
    if error.errno in (errno.EACCES, errno.EPERM):
        return _fail(index, "PERMISSION_DENIED", f"The server does not allow access to '{where}'.")
    if error.errno == errno.ENAMETOOLONG:
        return _fail(index, "INVALID_ARGUMENT", f"'{where}' is too long a path.")
    return _fail(index, "NOT_FOUND", f"No file at '{where}'.")


def _shown(path):
    return repr(path if len(path) <= 80 else path[:80] + "...")


def _unsupported(index, path):
    formats = ", ".join(f.lower() for f in limits.IMAGE_FILE_FORMATS)
    return _fail(index, "INVALID_ARGUMENT", f"{_shown(path)} is not an image in a supported format ({formats}).")


def image_size(ctx, index, path):
    """(width, height) of an image file, read from its header without decoding it."""
    with open_tenant_file(ctx, index, path) as file:
        try:
            with Image.open(file, formats=limits.IMAGE_FILE_FORMATS) as image:
                width, height = image.size
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            raise _unsupported(index, path) from None
    _check_pixels(index, path, width, height)
    return width, height


def _check_pixels(index, path, width, height):
    if width * height > limits.MAX_IMAGE_PIXELS:
        raise _fail(
            index,
            "QUOTA_EXCEEDED",
            f"{_shown(path)} is {width}x{height} pixels; images up to {limits.MAX_IMAGE_PIXELS} pixels can be drawn.",
        )


def decode_image(ctx, index, path, expected_size):
    """The first frame of an image file (as a browser draws it), as unpremultiplied
    RGBA rows in a numpy array. The file is opened afresh, so it must still have the
    size the export's memory estimate counted: a file swapped for a bigger one in the
    meantime is refused, not decoded."""
    with open_tenant_file(ctx, index, path) as file:
        try:
            with Image.open(file, formats=limits.IMAGE_FILE_FORMATS) as image:
                if image.size != tuple(expected_size):
                    raise _fail(index, "INVALID_ARGUMENT", f"{_shown(path)} changed while the canvas was being exported.")
                image.seek(0)
                return numpy.asarray(image.convert("RGBA"))
        except (UnidentifiedImageError, SyntaxError):
            raise _unsupported(index, path) from None
        except (OSError, ValueError, Image.DecompressionBombError):
            raise _fail(index, "INVALID_ARGUMENT", f"{_shown(path)} is a damaged image.") from None

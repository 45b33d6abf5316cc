"""The files capability: a tenant's own storage, by tenant paths (docs/files.md)."""

from capabilities.files.handlers import delete_file, file_exists, get_file_info, list_directory, read_file, write_file

__all__ = ["read_file", "write_file", "list_directory", "get_file_info", "file_exists", "delete_file"]

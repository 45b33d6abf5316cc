"""The image capability: information about and transforms of tenant image files, with
Pillow (docs/image.md)."""

from capabilities.image.handlers import image_info, image_transform

__all__ = ["image_info", "image_transform"]

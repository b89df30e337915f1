"""virtkit.images: the content-addressed OCI image store, the safe layer unpacker and image builders."""

from virtkit.images.store import ImageInfo, ImageStore

__all__ = ["ImageInfo", "ImageStore"]

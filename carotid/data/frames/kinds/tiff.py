"""TIFF files read by Pillow: one frame per page (a multi-page TIFF is a cine loop or a series)."""

from __future__ import annotations

from PIL import Image

from carotid.data.frames.kinds.base import Probe
from carotid.data.frames.kinds.image import ImageKind


class TiffKind(ImageKind):
    """Pages are read as ImageKind reads a single image (`seek` to the page first)."""

    name = "tiff"
    suffixes = frozenset({"tif", "tiff"})
    single_frame = False

    def probe(self, path: str) -> Probe:
        with Image.open(path) as image:
            return Probe(self.name, int(getattr(image, "n_frames", 1)))

"""How a frame becomes model input (crop, channels, resize mode, size): the options' values and checks.

Kept apart from the decoder so the option parser can use them without importing numpy or Pillow.
"""

from __future__ import annotations

from dataclasses import dataclass

RESIZE_MODES = ("letterbox", "crop", "stretch")
DEFAULT_RESIZE = "letterbox"  # keeps the aspect and every pixel: README "Geometry" says why
DEFAULT_CROP = "auto"  # the DICOM ultrasound region where a file names one, else the whole frame
LEGACY_PREPROCESSING = {"resize": "stretch", "crop": "none"}  # what model files of format 2 were trained with


@dataclass(frozen=True)
class Preprocessing:
    """How a frame becomes model input; stored in the model file so evaluate and predict do the same."""

    image_size: int
    in_channels: int
    resize: str = DEFAULT_RESIZE  # letterbox | crop | stretch
    crop: str = DEFAULT_CROP  # auto | none | "x0,y0,x1,y1"

    def fixed_box(self) -> tuple[int, int, int, int] | None:
        return parse_box(self.crop) if self.crop not in ("auto", "none") else None

    def draft_size(self) -> int | None:
        # A fixed crop box is in full-resolution pixels: a reduced JPEG decode would move it.
        return None if self.fixed_box() else self.image_size

    def tag(self) -> str:
        """A file-name-safe name of the resize and crop, for the cache folder."""
        return f"{self.resize}-{self.crop.replace(',', '_')}"

    def as_dict(self) -> dict:
        return {"resize": self.resize, "crop": self.crop}

    def describe(self) -> str:
        """In words, for a deployment's metadata and the report: what a frame goes through before the model."""
        size = self.image_size
        if self.crop == "auto":
            crop = "cut to the DICOM ultrasound imaging region where the file names one (else the whole frame)"
        elif self.crop == "none":
            crop = "no crop"
        else:
            crop = f"cut to the box {self.crop} (x0,y0,x1,y1 in the full frame's pixels)"
        resize = {
            "letterbox": f"the long side scaled to {size} px (bilinear, the short side to round(short x {size} / "
            f"long), at least 1) and the image centred on a black {size}x{size} square (offset (({size} - width) "
            f"// 2, ({size} - height) // 2)): aspect ratio kept",
            "crop": f"the short side scaled to {size} px (bilinear) and the centre {size}x{size} cut out (offset "
            f"((width - {size}) // 2, (height - {size}) // 2)): aspect ratio kept, edges lost",
            "stretch": f"scaled to {size}x{size} (bilinear): aspect ratio not kept",
        }[self.resize]
        return f"{crop}; then {resize} (--crop {self.crop} --resize {self.resize})"


def parse_box(text: str) -> tuple[int, int, int, int]:
    """'x0,y0,x1,y1' (pixels, x1 and y1 exclusive) → a tuple; ValueError with the reason otherwise."""
    parts = text.split(",")
    if len(parts) != 4 or not all(p.strip().lstrip("-").isdigit() for p in parts):
        raise ValueError(f"{text!r} is not four integers x0,y0,x1,y1")
    x0, y0, x1, y1 = (int(p) for p in parts)
    if x0 < 0 or y0 < 0 or x1 <= x0 or y1 <= y0:
        raise ValueError(f"{text!r} is not a box with 0 ≤ x0 < x1 and 0 ≤ y0 < y1")
    return x0, y0, x1, y1


def preprocessing_of(saved: dict | None) -> dict:
    """A model file's preprocessing with defaults for fields it lacks (older files: stretch, no crop)."""
    return {**LEGACY_PREPROCESSING, **(saved or {})}


# How a decoded frame of any kind becomes the model's channels (carotid.data.frames.decode and the readers in
# carotid.data.frames.kinds do exactly this): the parameters a deployment needs to prepare the same input.
RGB_TO_GREY = {
    "words": "luma of ITU-R 601-2 as Pillow's Image.convert('L') computes it, in fixed point",
    "weights": [0.299, 0.587, 0.114],
    "formula": "L = (19595*R + 38470*G + 7471*B + 32768) >> 16",
}
SIXTEEN_BIT = {
    "words": "grey frames of more than 8 bits are mapped linearly onto 0..255 by the range they can hold: "
    "value * 255 / (2^bits - 1), bits = the fewest (at least 8) that hold the frame's maximum, so 12-bit data "
    "in a 16-bit file is divided by 4095; rounded half to even and clipped to 0..255; a frame with negative "
    "values maps (value - min) / (max - min). DICOM: the modality rescale (slope, intercept or LUT) and the "
    "VOI LUT or window (the first) are applied first, then the output range (the LUT's bits, else BitsStored, "
    "signed when PixelRepresentation is 1, through the rescale) is mapped onto 0..255; MONOCHROME1 is inverted",
    "bits": "max(8, bit_length(max(frame)))",
    "scale": "round(value * 255 / (2**bits - 1))",
    "rounding": "half to even (numpy.rint), then clipped to 0..255",
}
PALETTE = (
    "palette frames (PNG, GIF or TIFF mode P; DICOM PALETTE COLOR) are mapped through their palette to RGB first "
    "(to grey when every palette entry is grey); a DICOM palette of more than 8 bits is scaled by 255/(2^bits - 1)"
)
YBR = (
    "DICOM YBR_FULL, YBR_FULL_422, YBR_ICT and YBR_RCT frames are converted to RGB by pydicom (ITU-R BT.601, "
    "full range) before anything else; JPEG files are decoded to RGB by Pillow"
)


def channel_conversion(in_channels: int) -> dict:
    """The contract of how colour, palette, YBR and 16-bit frames become the model's `in_channels` channels:
    in words and as parameters (a model file and its exports carry it)."""
    to_model = (
        {"rgb_to_grey": RGB_TO_GREY}
        if in_channels == 1
        else {"grey_to_rgb": "a grey frame is copied into R, G and B (Pillow's Image.convert('RGB'))"}
    )
    words = (
        "colour (RGB, after palette and YBR are applied) becomes grey by L = (19595*R + 38470*G + 7471*B + 32768) "
        ">> 16 (Pillow's convert('L'), weights 0.299, 0.587, 0.114)"
        if in_channels == 1
        else "grey frames are copied into three channels; colour frames stay RGB"
    )
    return {
        "words": f"{words}; {SIXTEEN_BIT['words']}; {PALETTE}; {YBR}. Order: decode, crop, channels, resize.",
        "order": ["decode (palette, YBR, 16-bit → uint8)", "crop", "channels", "resize"],
        **to_model,
        "sixteen_bit": {k: v for k, v in SIXTEEN_BIT.items() if k != "words"} | {"words": SIXTEEN_BIT["words"]},
        "palette": PALETTE,
        "ybr": YBR,
    }

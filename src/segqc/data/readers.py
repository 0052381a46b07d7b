"""Readers: single images and masks, the ISIC 2017 and generic folder layouts, protocol files.

Every failure raises :class:`~segqc.errors.DataError` with the offending file in the message.
"""

from __future__ import annotations

import json
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from segqc.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
#: Mask names tried, in order, for the generic ``images/`` + ``masks/`` layout.
MASK_PATTERNS = ("{id}_segmentation.png", "{id}_lesion.png", "{id}_mask.png", "{id}.png")
#: Official ISIC 2017 Part 1 folders: (image folder, ground-truth folder) per split.
ISIC2017_SPLITS = {
    "Training": ("ISIC-2017_Training_Data", "ISIC-2017_Training_Part1_GroundTruth"),
    "Validation": ("ISIC-2017_Validation_Data", "ISIC-2017_Validation_Part1_GroundTruth"),
    "Test": ("ISIC-2017_Test_v2_Data", "ISIC-2017_Test_v2_Part1_GroundTruth"),
}
_ISIC_IMAGE = re.compile(r"^(ISIC_\d+)\.jpg$", re.IGNORECASE)
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, UnidentifiedImageError)
Image.init()  # register every plugin now, so that ``formats=`` restrictions find them
#: Image formats (Pillow names) decoded from untrusted inputs by ``segqc predict`` and ``segqc serve``;
#: others (EPS, which runs Ghostscript, PSD, ICO, ...) are refused: fewer decoders exposed.
#: (Pillow's JPEG plugin also opens the MPO variant that cameras write.)
INPUT_FORMATS = tuple(f for f in ("PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP", "PPM") if f in Image.OPEN)

#: Signatures of accepted formats: a file that starts like one but that Pillow cannot identify is a
#: damaged or truncated image, not a non-image.
ACCEPTED_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
#: Formats whose Pillow plugin decodes pixels when merely opened (ICO decodes its largest icon, up to
#: Pillow's pixel limit): :func:`identify_format` names them from their signature instead.
_DECODED_ON_OPEN = tuple(f for f in ("ICO",) if f in Image.OPEN)


def starts_like_accepted(head: bytes) -> str | None:
    """The accepted format (of :data:`INPUT_FORMATS`) whose signature ``head`` starts with, if any."""
    for magic, fmt in ACCEPTED_MAGIC:
        if head.startswith(magic):
            return fmt
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


@dataclass(frozen=True)
class Pair:
    """One image file and its ground-truth mask file (``mask`` is ``None`` for unlabelled images)."""

    id: str
    image: Path
    mask: Path | None


class ImageTooLargeError(DataError):
    """The image declares more pixels than allowed (a possible decompression bomb)."""


def open_image(
    source: str | Path | BinaryIO,
    name: str,
    what: str = "image",
    max_pixels: int | None = None,
    formats: tuple[str, ...] | None = None,
) -> Image.Image:
    """Open and fully decode an image file or stream, with clear errors naming ``name``.

    Args:
        source: a path or a binary stream.
        name: how to name the source in errors (a path, an upload's file name).
        what: ``"image"`` or ``"mask"``, for the messages.
        max_pixels: refuse images declaring more pixels than this, before decoding them.
            Defaults to Pillow's decompression-bomb limit.
        formats: the Pillow formats to try (e.g. :data:`INPUT_FORMATS`); another format is a
            ``DataError``. Defaults to every format Pillow knows.
    """
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            # Pillow warns (rather than fails) between 1x and 2x its pixel limit: treat both as bombs.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(source, formats=formats)
            if limit and img.width * img.height > limit:
                raise ImageTooLargeError(
                    f"{name}: {what} declares {img.width}x{img.height} pixels, more than the limit of {limit}"
                )
            img.load()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise ImageTooLargeError(f"{name}: {what} is too large to decode safely ({err})") from None
    except ImageTooLargeError:
        raise
    except UnidentifiedImageError as err:
        if formats is None:
            raise DataError(f"{name}: cannot read {what} ({type(err).__name__}: {err})") from None
        # Say why, in the words the service uses: a format refused here, or no image at all.
        if hasattr(source, "seek"):
            source.seek(0)
        other = identify_format(source)
        accepted = ", ".join(formats)
        if other is not None:
            raise DataError(f"{name}: {other} images are not accepted (accepted: {accepted})") from None
        damaged = starts_like_accepted(_head(source))
        if damaged is not None:  # e.g. a PNG cut short in its header: a bad image, not a non-image
            raise DataError(
                f"{name}: cannot read {what}: it starts like a {damaged} file but its header is "
                "damaged or truncated"
            ) from None
        raise DataError(f"{name}: not an {what} (its content is no known image format)") from None
    except _DECODE_ERRORS as err:
        raise DataError(f"{name}: cannot read {what} ({type(err).__name__}: {err})") from None
    return img


def identify_format(source: str | Path | BinaryIO) -> str | None:
    """The name of any format Pillow knows that ``source`` is in, from its header only (nothing is
    decoded, so no refused decoder runs); ``None`` if none."""
    try:
        head = _head(source)
        for fmt in _DECODED_ON_OPEN:  # named by signature: opening it would decode it
            accept = Image.OPEN[fmt][1]
            if accept is not None and accept(head):
                return fmt
        others = [f for f in Image.ID if f not in _DECODED_ON_OPEN]
        with Image.open(source, formats=others) as probe:
            return str(probe.format)
    except Exception:  # noqa: BLE001 - any failure just means "not identified"
        return None


def _head(source: str | Path | BinaryIO, size: int = 16) -> bytes:
    """The first ``size`` bytes of a file or stream (a stream is left where it was); ``b""`` on error."""
    try:
        if isinstance(source, (str, Path)):
            with open(source, "rb") as fh:
                return fh.read(size)
        where = source.tell()
        source.seek(0)
        try:
            return source.read(size)
        finally:
            source.seek(where)
    except (OSError, ValueError):
        return b""


def single_frame(img: Image.Image, name: str) -> Image.Image:
    """``img`` if it holds one frame; a ``DataError`` for a multi-frame GIF, TIFF, APNG or WebP.

    Fail closed: assessing only the first frame would pass images nobody looked at.
    """
    frames = getattr(img, "n_frames", 1)
    if frames > 1:
        raise DataError(
            f"{name}: holds {frames} frames (a multi-frame GIF, TIFF or similar); segqc assesses "
            "single images: save each frame as its own file"
        )
    return img


def _open(path: Path, what: str) -> Image.Image:
    if not path.is_file():
        raise DataError(f"{path}: {what} file not found")
    return open_image(path, str(path), what)


def to_rgb(img: Image.Image) -> np.ndarray:
    """Any Pillow image (grey, 16-bit, RGBA, palette, EXIF-rotated) -> ``(H, W, 3)`` uint8 RGB."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite onto white: transparent regions of a photo are background, not black lesion.
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba)
    return np.asarray(img.convert("RGB"))


def read_image(path: str | Path, size: int | None = None) -> np.ndarray:
    """Read an image as ``(H, W, 3)`` uint8 RGB, resized (bilinear) to ``size x size`` if given."""
    path = Path(path)
    rgb = to_rgb(_open(path, "image"))
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise DataError(f"{path}: image has no pixels")
    return resize_image(rgb, size) if size else rgb


def resize_image(rgb: np.ndarray, size: int) -> np.ndarray:
    if rgb.shape[:2] == (size, size):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR))


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a {0,1} mask to ``(height, width)``."""
    if mask.shape == tuple(size):
        return mask
    return np.asarray(Image.fromarray(mask * 255).resize((size[1], size[0]), Image.NEAREST)) // 255


def read_mask(
    path: str | Path, size: int | None = None, *, expect_shape: tuple[int, int] | None = None
) -> np.ndarray:
    """Read a binary mask (values 0/255 or 0/1) as ``(H, W)`` uint8 in {0, 1}.

    Args:
        path: mask file.
        size: resize (nearest) to ``size x size`` after the checks. Defaults to no resize.
        expect_shape: ``(H, W)`` of the image the mask belongs to; a mask of another size is an error.
    """
    path = Path(path)
    img = _open(path, "mask")
    arr = np.asarray(img.convert("L") if img.mode in ("P", "1", "LA", "RGBA") else img)
    if arr.ndim == 3:
        if not (arr == arr[..., :1]).all():
            raise DataError(f"{path}: mask is a colour image; expected one channel with values 0/255 or 0/1")
        arr = arr[..., 0]
    if expect_shape is not None and arr.shape != tuple(expect_shape):
        raise DataError(
            f"{path}: mask is {arr.shape[1]}x{arr.shape[0]} "
            f"but its image is {expect_shape[1]}x{expect_shape[0]}"
        )
    values = np.unique(arr)
    if set(values.tolist()) <= {0, 255}:
        mask = (arr == 255).astype(np.uint8)
    elif set(values.tolist()) <= {0, 1}:
        mask = arr.astype(np.uint8)
    else:
        shown = ", ".join(str(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")
        raise DataError(f"{path}: mask is not binary (values {shown}); expected only 0/255 or 0/1")
    return resize_mask(mask, (size, size)) if size else mask


def read_pair(pair: Pair, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read an image and its mask, checking that they have the same size, then resize both."""
    if pair.mask is None:
        raise DataError(f"{pair.image}: no ground-truth mask found for id {pair.id!r}")
    image = read_image(pair.image)
    mask = read_mask(pair.mask, expect_shape=image.shape[:2])
    if size:
        image, mask = resize_image(image, size), resize_mask(mask, (size, size))
    return image, mask


def find_isic2017(root: str | Path) -> dict[str, Pair]:
    """Pairs of the official ISIC 2017 Part 1 layout under ``root``, keyed by ISIC id.

    Every split folder present is read (Training, Validation, Test_v2); the ``*_superpixels.png``
    files of the official archives are ignored. An image without its mask is kept with ``mask=None``.
    """
    root = Path(root)
    pairs: dict[str, Pair] = {}
    for image_dir, mask_dir in ISIC2017_SPLITS.values():
        if not (root / image_dir).is_dir():
            continue
        for path in sorted((root / image_dir).iterdir()):
            match = _ISIC_IMAGE.match(path.name)
            if match:
                id_ = match.group(1)
                mask = root / mask_dir / f"{id_}_segmentation.png"
                pairs[id_] = Pair(id_, path, mask if mask.is_file() else None)
    return pairs


def find_folder(root: str | Path, mask_pattern: str | None = None) -> dict[str, Pair]:
    """Pairs of the generic layout ``root/images/<id>.<ext>`` + ``root/masks/<mask_pattern>``.

    Args:
        root: folder holding ``images/`` and (optionally) ``masks/``.
        mask_pattern: mask file name with an ``{id}`` placeholder. Defaults to the one of
            :data:`MASK_PATTERNS` that names an existing file for the most images (ties: the first),
            so one missing mask leaves out that image only, and one naming serves the whole folder
            (a mask copied into ``images/`` is not taken for an image with its own mask).

    A mask name is matched whatever its case (``x_segmentation.PNG``), an exact name first; the
    other case of a name is never another image's own mask name. Two masks that differ only in case,
    or two images (ids differing in case) that would share one mask, are a :class:`DataError`.
    """
    root = Path(root)
    images = sorted(p for p in (root / "images").iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    masks = _files_by_lower_name(root / "masks")
    if mask_pattern is None:
        found = [sum(p.format(id=i.stem).lower() in masks for i in images) for p in MASK_PATTERNS]
        mask_pattern = MASK_PATTERNS[found.index(max(found))] if images else MASK_PATTERNS[-1]
    own_names = {mask_pattern.format(id=p.stem) for p in images}
    pairs: dict[str, Pair] = {}
    taken: dict[Path, Path] = {}  # mask -> the image it serves
    for path in images:
        if path.stem in pairs:
            raise DataError(f"{path}: two images share the id {path.stem!r}")
        name = mask_pattern.format(id=path.stem)
        exact = root / "masks" / name
        # another case of the name serves too, unless it is exactly another image's mask name
        same_name = (
            [exact]
            if exact.is_file()
            else [m for m in masks.get(name.lower(), []) if m.name not in own_names]
        )
        if len(same_name) > 1:
            raise DataError(f"{path}: two masks differ only in case: {', '.join(m.name for m in same_name)}")
        mask = same_name[0] if same_name else None
        if mask is not None and mask in taken:
            raise DataError(
                f"{taken[mask]} and {path} would share the mask {mask.name} (ids differ only in case)"
            )
        if mask is not None:
            taken[mask] = path
        pairs[path.stem] = Pair(path.stem, path, mask)
    return pairs


def _files_by_lower_name(folder: Path) -> dict[str, list[Path]]:
    """The files of ``folder`` by lower-case name, so a mask is found whatever the case of its name
    (``x_segmentation.PNG``, as some tools write it); an exact name is preferred."""
    files: dict[str, list[Path]] = {}
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.is_file():
                files.setdefault(path.name.lower(), []).append(path)
    return files


def missing_masks_hint(root: str | Path) -> str:
    """Why no image of ``root`` found a mask, for the error that says so."""
    root = Path(root)
    if any((root / image_dir).is_dir() for image_dir, _ in ISIC2017_SPLITS.values()):
        return "expected ISIC-2017_*_Part1_GroundTruth/ISIC_<id>_segmentation.png"
    masks = root / "masks"
    if not masks.is_dir():
        near = sorted(p.name for p in root.iterdir() if p.name.lower() == "masks" and p.is_dir())
        return f"there is no folder {masks}" + (
            f" ({near[0]}/ differs in case: rename it masks/)" if near else ""
        )
    names = ", ".join(p.replace("{id}", "<id>") for p in MASK_PATTERNS)
    return f"{masks} has no file named {names} (any case) for any image in images/"


def find_pairs(root: str | Path, mask_pattern: str | None = None) -> dict[str, Pair]:
    """Image/mask pairs under ``root``, in the ISIC 2017 layout or the generic folder layout."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    if any((root / image_dir).is_dir() for image_dir, _ in ISIC2017_SPLITS.values()):
        pairs = find_isic2017(root)
    elif (root / "images").is_dir():
        pairs = find_folder(root, mask_pattern)
    else:
        raise DataError(
            f"{root}: not a data folder; expected the ISIC 2017 layout (ISIC-2017_Training_Data/, ...) "
            "or images/ + masks/"
        )
    if not pairs:
        raise DataError(f"{root}: no images found")
    return pairs


def check_splits(path: str | Path, splits: dict[str, list[str]]) -> None:
    """Refuse an id listed twice in one of ``splits`` or in two of them (an image in both train and
    test would make the test scores optimistic); ``path`` names the protocol in the error."""
    for name, ids in splits.items():
        repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
        if repeated:
            raise DataError(f"{path}: split {name!r} lists an id more than once: {', '.join(repeated[:5])}")
    names = list(splits)
    for a, b in ((a, b) for k, a in enumerate(names) for b in names[k + 1 :]):
        shared = sorted(set(splits[a]) & set(splits[b]))
        if shared:
            raise DataError(
                f"{path}: {len(shared)} id{'s are' if len(shared) > 1 else ' is'} in both {a!r} and "
                f"{b!r}, e.g. {', '.join(shared[:5])}"
            )


def read_protocol(path: str | Path) -> dict[str, list[str]]:
    """Read a protocol file: JSON with named lists of ids, e.g. ``{"train": [...], "test": [...]}``."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: protocol file not found") from None
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read protocol file ({err})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: protocol must be a JSON object of named id lists")
    splits = {k: v for k, v in raw.items() if isinstance(v, list)}
    for name, ids in splits.items():
        if not all(isinstance(i, str) for i in ids):
            raise DataError(f"{path}: split {name!r} must be a list of id strings")
    if not splits:
        raise DataError(f"{path}: protocol has no id lists")
    return splits

"""Turn request payloads into the contract's tensor: JSON pixel lists and uploaded PNG/JPEG files.

    python -c "from services.preprocess import mnist_input; help(mnist_input)"

Every failure raises ``InputError`` with a message that names what was wrong; the service turns
it into a 4xx. Numpy and Pillow only.
"""

from __future__ import annotations

import io
import warnings

import numpy as np

from models.contract import IMAGE_SHAPE, PIXEL_MAX, PIXEL_MIN

DIGIT_BOX = 20  # MNIST digits are scaled to fit 20x20, then centred in 28x28 by centre of mass
INK_THRESHOLD = 0.2  # of the stretched [0, 1] range: fainter pixels are background


class InputError(ValueError):
    """A request's input is unusable; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def images_array(images: object, *, max_images: int) -> np.ndarray:
    """Validate nested lists of pixels: (N, 28, 28) float32 in [0, 1], 1 <= N <= max_images."""
    if not isinstance(images, (list, np.ndarray)):
        raise InputError(f"images must be a list of 28x28 images, not {type(images).__name__}")
    if len(images) == 0:
        raise InputError(f"images is empty: send 1 to {max_images} images of 28x28 pixels")
    try:
        array = np.asarray(images)
    except (ValueError, TypeError) as error:
        raise InputError(f"images must be a list of 28x28 lists of numbers ({error})") from error
    if array.dtype.kind not in "fiu":  # numbers only: no strings, no true/false
        raise InputError(f"images must hold numbers: found {array.dtype.name} values")
    if array.ndim != 3 or array.shape[1:] != IMAGE_SHAPE:
        raise InputError(f"images has shape {array.shape}: expected (N, 28, 28)")
    if len(array) > max_images:
        raise InputError(f"{len(array)} images in one request: the maximum is {max_images}",
                         status=413)
    array = array.astype(np.float32, copy=False)
    return check_pixels(array, "images")


def check_pixels(array: np.ndarray, name: str) -> np.ndarray:
    """Reject NaN, infinities and values outside [0, 1], saying which image and what was found."""
    finite = np.isfinite(array)
    if not finite.all():
        first = int(np.argwhere(~finite.reshape(len(array), -1).all(axis=1))[0][0])
        raise InputError(f"{name}[{first}] holds NaN or infinite values: pixels must be finite")
    low, high = float(array.min()), float(array.max())
    if low < PIXEL_MIN or high > PIXEL_MAX:
        hint = " (divide 0-255 pixels by 255)" if high > PIXEL_MAX else ""
        raise InputError(f"{name} has values in [{low:g}, {high:g}]: pixels must lie in "
                         f"[{PIXEL_MIN:g}, {PIXEL_MAX:g}]{hint}")
    return array


def decode_image(data: bytes, *, max_pixels: int):
    """Open PNG/JPEG bytes as a Pillow image, refusing non-images and decompression bombs."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InputError("the uploaded image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise InputError(f"the image is {width}x{height} = {width * height:,} pixels: the "
                                 f"limit is {max_pixels:,}", status=413)
            if image.format not in ("PNG", "JPEG"):
                raise InputError(f"the upload is a {image.format} image: send a PNG or a JPEG",
                                 status=415)
            image.load()  # decodes now, so a truncated file fails here
    except InputError:
        raise
    except UnidentifiedImageError as error:
        raise InputError("the upload is not an image Pillow can read: send a PNG or a JPEG",
                         status=415) from error
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as error:
        raise InputError(f"the image could not be decoded ({error}): is it truncated?") from error
    return image


def grayscale(image) -> np.ndarray:
    """(H, W) float32 in [0, 1] from any mode; transparency becomes a background that contrasts."""
    from PIL import ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA") and image.getchannel("A").getextrema()[0] < 255:
        # A drawing on a transparent canvas: put it on white if its ink is dark, else on black.
        alpha = np.asarray(image.getchannel("A"), np.float32) / 255.0
        ink = np.asarray(image.convert("L"), np.float32) / 255.0
        ink_level = float((ink * alpha).sum() / max(alpha.sum(), 1e-6))
        background = 1.0 if ink_level < 0.5 else 0.0
        return ink * alpha + background * (1.0 - alpha)
    if image.mode in ("I", "I;16"):
        array = np.asarray(image, np.float32)
        return array / max(float(array.max()), 1.0)
    return np.asarray(image.convert("L"), np.float32) / 255.0


def mnist_input(image) -> np.ndarray:
    """A Pillow image of one digit -> (28, 28) float32 in [0, 1] the way MNIST was made.

    Grayscale; inverted when the background (the border's median) is light; stretched so that
    the background is 0 and the darkest ink 1; cropped to the digit; scaled to fit 20x20; placed
    in 28x28 with its centre of mass at the centre.
    """
    from PIL import Image

    pixels = grayscale(image)  # (H, W) in [0, 1]
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    if np.median(border) > 0.5:
        pixels = 1.0 - pixels  # MNIST is light ink on black
        border = 1.0 - border
    background, peak = float(np.median(border)), float(pixels.max())
    if peak - background < 0.1:
        raise InputError("no digit found in the image: it has no contrast", status=422)
    pixels = np.clip((pixels - background) / (peak - background), 0.0, 1.0)
    pixels[pixels < INK_THRESHOLD] = 0.0

    rows, cols = np.nonzero(pixels)
    digit = pixels[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1]
    height, width = digit.shape
    scale = DIGIT_BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))  # Pillow: (W, H)
    fitted = Image.fromarray(digit).resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    fitted = np.clip(np.asarray(fitted, np.float32), 0.0, 1.0)  # (h, w), h and w <= 20

    total = float(fitted.sum())
    if total <= 0.0:
        raise InputError("no digit found in the image", status=422)
    ys, xs = np.indices(fitted.shape)
    centre_y, centre_x = (ys * fitted).sum() / total, (xs * fitted).sum() / total
    top = int(round(IMAGE_SHAPE[0] / 2 - centre_y))
    left = int(round(IMAGE_SHAPE[1] / 2 - centre_x))
    top = min(max(top, 0), IMAGE_SHAPE[0] - fitted.shape[0])  # keep the whole digit inside
    left = min(max(left, 0), IMAGE_SHAPE[1] - fitted.shape[1])
    canvas = np.zeros(IMAGE_SHAPE, np.float32)
    canvas[top: top + fitted.shape[0], left: left + fitted.shape[1]] = fitted
    return canvas

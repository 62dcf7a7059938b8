"""Real photographs that installed packages ship, and pencil sketches of them."""

from __future__ import annotations

import logging

import numpy as np

from dmask.io.face_crops import LUMA_709, check_image, luminance_of
from dmask.io.photographs import dtype_peak, failure_reason, read_image

logger = logging.getLogger(__name__)

__all__ = ["sample_photographs", "sketch"]


def sketch(image: np.ndarray) -> np.ndarray:
    """A pencil-sketch rendering of a photograph.

    Grey, inverted and blurred copy colour-dodged onto the grey image, then
    darkened a little for contrast. Deterministic.

    Returns
    -------
    numpy.ndarray
        ``(H, W, 1)`` uint8.
    """
    from skimage.filters import gaussian

    image = check_image(image)
    gray = luminance_of(image, LUMA_709) * (255.0 / dtype_peak(image.dtype))
    sigma = max(1.0, min(gray.shape) / 60.0)
    blurred = gaussian(255.0 - gray, sigma=sigma, preserve_range=True)
    room = np.maximum(255.0 - blurred, 1e-6)
    dodge = np.minimum(255.0, gray * 255.0 / room)
    out = 255.0 * (dodge / 255.0) ** 1.5
    return np.rint(np.clip(out, 0, 255)).astype(np.uint8)[..., None]


def sample_photographs() -> dict[str, np.ndarray]:
    """Real photographs shipped by installed packages, as ``(H, W, 3)`` uint8.

    ``astronaut`` and ``chelsea`` (a cat) from scikit-image, ``grace_hopper``
    from matplotlib; any that is unavailable is left out with a warning.
    """
    photos: dict[str, np.ndarray] = {}

    def astronaut() -> np.ndarray:
        from skimage.data import astronaut

        return astronaut()

    def chelsea() -> np.ndarray:
        from skimage.data import chelsea

        return chelsea()

    def grace_hopper() -> np.ndarray:
        from matplotlib import cbook

        return read_image(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))

    for name, load in (
        ("astronaut", astronaut),
        ("chelsea", chelsea),
        ("grace_hopper", grace_hopper),
    ):
        try:
            photos[name] = check_image(np.asarray(load()))
        except Exception as exc:  # missing package or data file
            logger.warning(
                "sample photograph %s unavailable: %s", name, failure_reason(exc)
            )
    return photos

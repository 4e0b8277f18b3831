"""Pre- and post-processing shared by every inference backend.

The network sees a fixed ``N x 3 x Hn x Wn`` float32 RGB tensor in [0, 1]; callers hand in images of any size.
:func:`plan_input` decides how one maps to the other and :func:`to_network` / :func:`from_network` apply it:

- ``"pad"``: the image padded right/bottom to a multiple of the network stride is exactly the network size.
  Padding replicates the border (a zero border would create a strong false edge that the cost volume matches)
  and the output is cropped, so the runner returns the network's own values in the un-padded region.
- ``"resize"``: any other size is resized to the network size (bilinear, area for shrinking) and the
  disparity is resized back and multiplied by ``width / Wn`` so it is expressed in *input* pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PAD = "pad"
RESIZE = "resize"


@dataclass(frozen=True)
class InputPlan:
    """How an ``height x width`` image pair maps onto the ``net_height x net_width`` network input."""

    height: int
    width: int
    net_height: int
    net_width: int
    mode: str

    @property
    def disparity_scale(self) -> float:
        """Factor from network-pixel disparity to input-pixel disparity (1 when padding)."""
        return 1.0 if self.mode == PAD else self.width / self.net_width


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


INPUT_SCALE_RANGE = (0.25, 4.0)


def check_input_scale(scale: float) -> float:
    """``scale`` as a float, or ``ValueError`` outside :data:`INPUT_SCALE_RANGE`."""
    lo, hi = INPUT_SCALE_RANGE
    if not lo <= float(scale) <= hi:
        raise ValueError(f"input_scale must be in [{lo:g}, {hi:g}], instead got {scale}")
    return float(scale)


def scaled_input_size(*, height: int, width: int, scale: float, stride: int) -> tuple[int, int]:
    """The network size ``(W, H)`` for an image resized by ``scale``: each side rounded, then up to ``stride``."""
    scale = check_input_scale(scale)
    return (
        round_up(max(1, round(width * scale)), stride),
        round_up(max(1, round(height * scale)), stride),
    )


def validate_image(image, *, name: str, allow_float: bool = False) -> np.ndarray:
    """Checks one image and returns it as a contiguous ``H x W x 3`` array.

    Accepted: uint8 ``H x W x 3`` RGB, or grayscale ``H x W`` / ``H x W x 1`` which is replicated to three
    channels (the networks are trained on RGB; a mono camera's intensity in all three channels is what they
    see for grey scenes). float32/float64 images in [0, 1] only with ``allow_float=True`` - refusing them by
    default catches the common bug of handing over 0..255 floats or a normalised tensor twice.
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name} image must be a numpy array, instead got {type(image).__name__}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"{name} image must be H x W x 3 (RGB) or H x W (grayscale), instead got shape {image.shape}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name} image is empty, shape {image.shape}")
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    if image.dtype in (np.float32, np.float64):
        if not allow_float:
            raise ValueError(
                f"{name} image has dtype {image.dtype}; expected uint8 RGB (pass allow_float=True for float "
                "images already scaled to [0, 1])"
            )
        return np.ascontiguousarray(image, dtype=np.float32)
    raise ValueError(f"{name} image must have dtype uint8 (or float in [0, 1]), instead got {image.dtype}")


def validate_pair(left, right, *, allow_float: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Validates a rectified pair; both become ``H x W x 3`` of the same size and dtype."""
    left_in_shape = getattr(left, "shape", None)
    right_in_shape = getattr(right, "shape", None)
    left = validate_image(left, name="left", allow_float=allow_float)
    right = validate_image(right, name="right", allow_float=allow_float)
    if left.shape != right.shape:
        raise ValueError(
            f"left and right images must have the same size, instead got left {left_in_shape} and "
            f"right {right_in_shape}"
        )
    if _is_grayscale(left_in_shape) != _is_grayscale(right_in_shape):
        # A mono left with a colour right is almost always a wiring mistake (two different topics/encodings),
        # and the photometric mismatch silently ruins matching, so it is refused rather than expanded.
        raise ValueError(
            f"left and right must both be colour or both grayscale, instead got left {left_in_shape} and "
            f"right {right_in_shape}"
        )
    if left.dtype != right.dtype:
        raise ValueError(f"left and right dtypes differ: {left.dtype} vs {right.dtype}")
    return left, right


def _is_grayscale(shape: tuple[int, ...]) -> bool:
    return len(shape) == 2 or shape[-1] == 1


def plan_input(*, height: int, width: int, stride: int, input_size: tuple[int, int] | None) -> InputPlan:
    """Chooses padding or resizing for an ``height x width`` image.

    ``input_size`` is the network's fixed ``(W, H)``; ``None`` means a shape-flexible backend (torch), which
    runs the image padded to ``stride``.
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, instead got {stride}")
    padded_h, padded_w = round_up(height, stride), round_up(width, stride)
    if input_size is None:
        return InputPlan(height, width, padded_h, padded_w, PAD)
    net_w, net_h = (int(v) for v in input_size)
    if net_w <= 0 or net_h <= 0 or net_w % stride or net_h % stride:
        raise ValueError(f"input_size must be positive multiples of the stride {stride}, instead got {input_size}")
    if (padded_w, padded_h) == (net_w, net_h):
        return InputPlan(height, width, net_h, net_w, PAD)
    return InputPlan(height, width, net_h, net_w, RESIZE)


def to_network(left: np.ndarray, right: np.ndarray, plan: InputPlan) -> tuple[np.ndarray, np.ndarray]:
    """Two validated ``H x W x 3`` images -> two ``1 x 3 x Hn x Wn`` float32 arrays in [0, 1]."""
    return _image_to_tensor(left, plan), _image_to_tensor(right, plan)


def _image_to_tensor(image: np.ndarray, plan: InputPlan) -> np.ndarray:
    if plan.mode == PAD:
        pad_b, pad_r = plan.net_height - plan.height, plan.net_width - plan.width
        if pad_b or pad_r:
            image = cv2.copyMakeBorder(image, 0, pad_b, 0, pad_r, cv2.BORDER_REPLICATE)
    else:
        shrinking = plan.net_width < plan.width and plan.net_height < plan.height
        image = cv2.resize(
            image,
            (plan.net_width, plan.net_height),
            interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR,
        )
    x = image.astype(np.float32)
    if image.dtype == np.uint8:
        # Divide (not multiply by 1/255): bit-identical to torchvision's ToTensor and the training loaders.
        x /= np.float32(255.0)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def from_network(
    disparity: np.ndarray, confidence: np.ndarray, plan: InputPlan
) -> tuple[np.ndarray, np.ndarray]:
    """Network outputs (``Hn x Wn``, or with leading singleton dims) -> ``H x W`` float32 in input pixels."""
    disparity = _squeeze_map(disparity, plan, "disparity")
    confidence = _squeeze_map(confidence, plan, "confidence")
    if plan.mode == PAD:
        disparity = disparity[: plan.height, : plan.width]
        confidence = confidence[: plan.height, : plan.width]
    else:
        size = (plan.width, plan.height)
        disparity = cv2.resize(disparity, size, interpolation=cv2.INTER_LINEAR) * np.float32(plan.disparity_scale)
        confidence = cv2.resize(confidence, size, interpolation=cv2.INTER_LINEAR)
    return (
        np.ascontiguousarray(disparity, dtype=np.float32),
        np.ascontiguousarray(confidence, dtype=np.float32),
    )


def _squeeze_map(x: np.ndarray, plan: InputPlan, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    x = x.reshape(x.shape[-2:]) if x.ndim >= 2 and int(np.prod(x.shape[:-2])) == 1 else x
    if x.shape != (plan.net_height, plan.net_width):
        raise RuntimeError(
            f"network {name} output has shape {x.shape}, expected ({plan.net_height}, {plan.net_width}) "
            "(1 x 1 x H x W); the model does not follow the StereoNet output contract"
        )
    return x

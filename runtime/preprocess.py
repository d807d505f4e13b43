"""Face square -> 40x40 grey crop -> normalised float, and landmarks both ways.

This is the only crop code in the project: training (`train/pipeline.py`) calls these very
functions, so what the model saw in training is what it sees on a camera. Numpy and OpenCV
only.

Coordinates: image points are in pixel-index coordinates (pixel (0, 0) is centred on 0, 0).
A face square is (cx, cy, side, angle); crop units run 0..1 across it, x along the
square's rotated x axis. Landmark targets and the landmark head's outputs are in crop units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from facemtl.runtime.spec import CropPolicy, InputSpec
from facemtl.runtime.errors import ImageError  # noqa: F401 (re-exported)

# The first warp samples at most this many times the input size; an area resize then brings
# it down. One bilinear warp straight to 40x40 would alias: a 200-pixel face would be
# sampled at every fifth pixel and the crop would shimmer from frame to frame.
_OVERSAMPLE = 4


@dataclass(frozen=True)
class Square:
    """A face square in image pixels; `angle` in degrees turns the square's x axis clockwise
    on screen (image y points down), so `angle` = the roll of the eye line."""

    cx: float
    cy: float
    side: float
    angle: float = 0.0

    def as_array(self) -> np.ndarray:
        return np.array([self.cx, self.cy, self.side, self.angle], dtype=np.float64)

    def box(self) -> tuple[float, float, float, float]:
        """Axis-aligned x, y, w, h (of the unrotated square)."""
        return (self.cx - self.side / 2, self.cy - self.side / 2, self.side, self.side)


def to_grey(image: np.ndarray, where: str = "image") -> np.ndarray:
    """BGR, BGRA or grey uint8 -> grey uint8 (H, W). Anything else is a clear error."""
    if not isinstance(image, np.ndarray):
        raise ImageError(f"{where}: expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ImageError(f"{where}: expected uint8 pixels, got {image.dtype}")
    if image.size == 0:
        raise ImageError(f"{where}: empty image of shape {image.shape}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        grey = image
    elif image.ndim == 3 and image.shape[2] == 3:
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    elif image.ndim == 3 and image.shape[2] == 4:
        grey = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    else:
        raise ImageError(f"{where}: expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {image.shape}")
    if grey.shape[0] < 2 or grey.shape[1] < 2:
        raise ImageError(f"{where}: image of {grey.shape[1]}x{grey.shape[0]} pixels is too small")
    return np.ascontiguousarray(grey)


def read_grey(path) -> np.ndarray:
    """Read an image file as grey exactly as the runtime would: decode BGR, then `to_grey`."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ImageError(f"{path}: cannot read or decode image")
    return to_grey(image, where=str(path))


def canonical_square(points: np.ndarray, policy: CropPolicy, angle: float = 0.0) -> Square:
    """The training framing of a face from its five landmarks (N.B. rotation-invariant size)."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    # plain arithmetic: called several times per tracked face and frame, on five points
    n = len(p)
    centre = p.sum(axis=0) / n
    d = p - centre
    rms = math.sqrt(float(np.vdot(d, d)) / n)
    side = policy.scale * rms
    # shift along the square's own y axis, so a rolled face is framed like an upright one
    a = math.radians(angle)
    cx = centre[0] - math.sin(a) * policy.shift_y * side
    cy = centre[1] + math.cos(a) * policy.shift_y * side
    return Square(float(cx), float(cy), float(side), float(angle))


def image_square(shape: tuple[int, ...]) -> Square:
    """The square centred on the whole image that just contains it (crop mode "image")."""
    h, w = shape[:2]
    return Square((w - 1) / 2, (h - 1) / 2, float(max(w, h)))


def face_square(grey: np.ndarray, points: np.ndarray, policy: CropPolicy) -> Square:
    """The square a face is cut from under `policy`, given its (annotated) landmarks."""
    if policy.mode == "image":
        return image_square(grey.shape)
    return canonical_square(points, policy)


def eye_angle(points: np.ndarray) -> float:
    """Roll of the eye line in degrees (image-left eye to image-right eye)."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    d = p[1] - p[0]
    return math.degrees(math.atan2(d[1], d[0]))


def crop_matrix(square: Square) -> np.ndarray:
    """2x3 affine taking image pixel coordinates to crop units (0..1 across the square)."""
    a = math.radians(square.angle)
    c, s = math.cos(a), math.sin(a)
    k = 1.0 / square.side
    return np.array(
        [
            [c * k, s * k, 0.5 - k * (c * square.cx + s * square.cy)],
            [-s * k, c * k, 0.5 - k * (-s * square.cx + c * square.cy)],
        ]
    )


def to_crop(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Image pixels -> crop units, for (..., 2) points and a 2x3 `crop_matrix`."""
    p = np.asarray(points, dtype=np.float64)
    return p @ matrix[:, :2].T + matrix[:, 2]


def to_image(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Crop units -> image pixels: the inverse of `to_crop`."""
    inv = cv2.invertAffineTransform(np.asarray(matrix, dtype=np.float64))
    return np.asarray(points, dtype=np.float64) @ inv[:, :2].T + inv[:, 2]


def crop(grey: np.ndarray, square: Square, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut `square` out of a grey image as a `size` x `size` float32 crop (pixel values).

    Returns the crop and its `crop_matrix`. Parts of the square outside the image are filled
    by replicating the border, so faces cut by the frame edge are padded, not dropped.
    """
    m = crop_matrix(square)
    inter = _intermediate(square.side, size)
    # crop units u -> pixel index u * inter - 0.5 of the intermediate image
    warp = m * inter
    warp[:, 2] -= 0.5
    patch = cv2.warpAffine(grey, warp, (inter, inter), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if inter != size:
        patch = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
    return patch.astype(np.float32), m


def _intermediate(side: float, size: int) -> int:
    """The side, in pixels, of `crop`'s warp before its area resize to `size` (`_OVERSAMPLE`)."""
    return int(min(max(round(side), size), _OVERSAMPLE * size))


def _region(shape: tuple[int, ...], square: Square) -> tuple[int, int, int, int]:
    """The frame region (x0, y0, x1, y1) `crop_region` greys for `square`: the square and the
    bilinear margin, cut by the frame edge."""
    h, w = shape[:2]
    a = math.radians(square.angle)
    half = square.side / 2 * (abs(math.cos(a)) + abs(math.sin(a))) + 2
    x0 = min(max(int(math.floor(square.cx - half)), 0), w - 1)
    y0 = min(max(int(math.floor(square.cy - half)), 0), h - 1)
    x1 = max(min(int(math.ceil(square.cx + half)) + 1, w), x0 + 1)
    y1 = max(min(int(math.ceil(square.cy + half)) + 1, h), y0 + 1)
    return x0, y0, x1, y1


def _grey_region(image: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    roi = image[y0:y1, x0:x1]
    if roi.ndim == 2:
        return roi
    return cv2.cvtColor(roi, cv2.COLOR_BGR2GRAY if roi.shape[2] == 3 else cv2.COLOR_BGRA2GRAY)


def crop_region(image: np.ndarray, square: Square, size: int) -> tuple[np.ndarray, np.ndarray]:
    """`preprocess.crop` of `square` from a BGR or grey frame, converting only the region the
    square covers to grey. Same pixels as cropping the whole grey frame: the region holds the
    square and the bilinear margin, and where it is cut by the frame edge, `crop` replicates
    that edge just as it would on the whole frame. Returns (patch, full-frame crop matrix)."""
    x0, y0, x1, y1 = _region(image.shape, square)
    local = Square(square.cx - x0, square.cy - y0, square.side, square.angle)
    patch, _ = crop(_grey_region(image, x0, y0, x1, y1), local, size)
    return patch, crop_matrix(square)


def normalize(patch: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Per-crop standardisation (see `InputSpec`) of one (H, W) or a batch (N, H, W) of crops."""
    x = np.asarray(patch, dtype=np.float32)
    axes = (-2, -1)
    mean = x.mean(axis=axes, keepdims=True)
    # x.std's own arithmetic, step for step (bit for bit the same), on the mean and the
    # centred crops already at hand instead of computing both again
    d = x - mean
    var = np.add.reduce(d * d, axis=axes, keepdims=True)
    np.true_divide(var, np.intp(x.shape[-1] * x.shape[-2]), out=var, casting="unsafe")
    std = np.maximum(np.sqrt(var, out=var), spec.min_std, out=var)
    d /= std
    return d


def prepare(grey: np.ndarray, squares: list[Square], spec: InputSpec) -> tuple[np.ndarray, np.ndarray]:
    """Crops for every face of one image: (N, size, size, 1) model input and (N, 2, 3) matrices."""
    n = len(squares)
    batch = np.empty((n, spec.size, spec.size, 1), dtype=np.float32)
    mats = np.empty((n, 2, 3), dtype=np.float64)
    for i, sq in enumerate(squares):
        patch, mats[i] = crop(grey, sq, spec.size)
        batch[i, :, :, 0] = normalize(patch, spec)
    return batch, mats


# --- Patches around landmarks (the refinement stage) -------------------------------------------

def point_squares(points: np.ndarray, policy: CropPolicy, patch: float) -> list[Square]:
    """One square per landmark, centred on it: side `patch` x the side of the face square of
    these points under `policy` (`canonical_square`), turned by the roll of their eye line, so
    every patch of a face has the same size and upright orientation whatever the face's roll."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    angle = eye_angle(p)
    # at least a pixel: points collapsed onto one (a broken first stage) must not divide by 0
    side = max(patch * canonical_square(p, policy).side, 1.0)
    return [Square(float(x), float(y), side, angle) for x, y in p]


def point_patches(image: np.ndarray, points: np.ndarray, policy: CropPolicy, patch: float,
                  spec: InputSpec) -> tuple[np.ndarray, np.ndarray]:
    """The refinement stage's input for one face: a (size, size, K) float32 array, channel k
    the patch around landmark k, standardised on its own (`normalize`); and the (K, 2, 3) crop
    matrices of the patches (image pixels -> patch units). `frame_patches` for one face:
    training (`facemtl.train.refine`) cuts with this, the runtime with `frame_patches`."""
    x, mats = frame_patches(image, np.asarray(points, dtype=np.float64).reshape(1, -1, 2), policy, patch, spec)
    return x[0], mats[0]


def frame_patches(image: np.ndarray, points: np.ndarray, policy: CropPolicy, patch: float,
                  spec: InputSpec) -> tuple[np.ndarray, np.ndarray]:
    """`point_patches` for the N faces of one frame at once: (N, size, size, K) float32 input
    and (N, K, 2, 3) matrices for (N, K, 2) landmarks.

    Each patch has, bit for bit, the pixels `crop_region` cuts for its square (from a grey, BGR
    or BGRA frame; `point_squares` gives the squares). Only the warps are per patch: each
    patch's warp reads its own region (`_region`) as a view of its face's one grey region, so
    the sampling positions are those of `crop`. Everything else runs once per frame over all
    patches (squares, regions and matrices as arrays, one standardisation) or once per face
    (the grey conversion, one area resize of the face's stacked patches), because on a
    tracked crowd the per-patch Python around small arrays cost more than the warps."""
    p = np.asarray(points, dtype=np.float64)
    n, k = p.shape[0], p.shape[1]
    size = spec.size
    if n == 0:
        return np.zeros((0, size, size, k), np.float32), np.zeros((0, k, 2, 3))
    # per face: the eye line's roll and the patch side, as `point_squares` computes them
    # (scalar maths per face: numpy's vectorised atan2 and summed squares can differ from
    # math.atan2 and np.vdot in the last bit, and then a warp may sample a pixel differently)
    eye = p[:, 1] - p[:, 0]
    rad = [math.radians(math.degrees(math.atan2(dy, dx))) for dx, dy in eye.tolist()]
    d = p - (p.sum(axis=1) / k)[:, None, :]
    rms = np.array([math.sqrt(float(np.vdot(di, di)) / k) for di in d])
    side = np.maximum(patch * (policy.scale * rms), 1.0)
    c = np.array([math.cos(a) for a in rad])
    s = np.array([math.sin(a) for a in rad])
    inters = [_intermediate(v, size) for v in side]
    # per patch (face-major): the square's full-frame crop matrix, `_region` and warp
    c, s, side = np.repeat(c, k), np.repeat(s, k), np.repeat(side, k)
    (x0, y0, x1, y1), mats, warps = _square_warps(image.shape, p[..., 0].ravel(), p[..., 1].ravel(), side, c, s,
                                                  np.repeat(inters, k))
    raw = np.empty((n * k, size, size), np.uint8)
    # each face's grey region: the box of its patches' regions
    fx0, fy0 = x0.reshape(n, k).min(axis=1).tolist(), y0.reshape(n, k).min(axis=1).tolist()
    fx1, fy1 = x1.reshape(n, k).max(axis=1).tolist(), y1.reshape(n, k).max(axis=1).tolist()
    x0, y0, x1, y1 = x0.tolist(), y0.tolist(), x1.tolist(), y1.tolist()
    rows, warps, q = raw.reshape(n * k * size, size), list(warps), 0
    for i in range(n):
        inter, fx, fy = inters[i], fx0[i], fy0[i]
        grey = _grey_region(image, fx, fy, fx1[i], fy1[i])
        # the face's patches stacked, their boundaries on whole rows of the resized stack too
        face = rows[i * k * size:(i + 1) * k * size]
        stack = face if inter == size else np.empty((k * inter, inter), np.uint8)
        for j in range(0, k * inter, inter):
            cv2.warpAffine(grey[y0[q] - fy:y1[q] - fy, x0[q] - fx:x1[q] - fx], warps[q], (inter, inter),
                           stack[j:j + inter], cv2.INTER_LINEAR, cv2.BORDER_REPLICATE)
            q += 1
        if inter != size:
            cv2.resize(stack, (size, k * size), face, 0, 0, cv2.INTER_AREA)
    x = normalize(raw.astype(np.float32), spec).reshape(n, k, size, size)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)), mats.reshape(n, k, 2, 3)


def frame_crops(image: np.ndarray, squares: list[Square], size: int) -> tuple[np.ndarray, np.ndarray]:
    """`crop_region` of every square of one frame: (N, size, size) float32 crops and (N, 2, 3)
    full-frame crop matrices, bit for bit what N `crop_region` calls give. The squares'
    regions and matrices are computed as arrays in one go; each square still has its own grey
    conversion, warp and resize (faces differ in size, so in the warp's intermediate size)."""
    n = len(squares)
    if n == 0:
        return np.zeros((0, size, size), np.float32), np.zeros((0, 2, 3))
    geo = np.array([(q.cx, q.cy, q.side) for q in squares], dtype=np.float64)
    cx, cy, side = geo[:, 0], geo[:, 1], geo[:, 2]
    rad = [math.radians(q.angle) for q in squares]
    c = np.array([math.cos(a) for a in rad])
    s = np.array([math.sin(a) for a in rad])
    inters = [_intermediate(v, size) for v in side.tolist()]
    (x0, y0, x1, y1), mats, warps = _square_warps(image.shape, cx, cy, side, c, s, np.array(inters))
    raw = np.empty((n, size, size), np.uint8)
    for i, (inter, rx0, ry0, rx1, ry1) in enumerate(zip(inters, x0.tolist(), y0.tolist(), x1.tolist(), y1.tolist())):
        grey = _grey_region(image, rx0, ry0, rx1, ry1)
        if inter == size:
            cv2.warpAffine(grey, warps[i], (inter, inter), dst=raw[i], flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
        else:
            big = cv2.warpAffine(grey, warps[i], (inter, inter), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_REPLICATE)
            cv2.resize(big, (size, size), dst=raw[i], interpolation=cv2.INTER_AREA)
    return raw.astype(np.float32), mats


def _square_warps(shape: tuple[int, ...], cx, cy, side, c, s, inter: np.ndarray):
    """For many squares (centres, sides, cosine and sine of their angles) and their warps'
    intermediate sizes: their regions (`_regions`), full-frame crop matrices, and `crop`'s
    warp of each square from its own region (crop units u -> pixel u * inter - 0.5)."""
    x0, y0, x1, y1 = _regions(shape, cx, cy, side, c, s)
    mats = _crop_matrices(cx, cy, side, c, s)
    warps = _crop_matrices(cx - x0, cy - y0, side, c, s) * inter[:, None, None]
    warps[:, :, 2] -= 0.5
    return (x0, y0, x1, y1), mats, warps


def _regions(shape: tuple[int, ...], cx, cy, side, c, s) -> tuple[np.ndarray, ...]:
    """`_region` of many squares at once (x0, y0, x1, y1 arrays), the same arithmetic."""
    h, w = shape[:2]
    half = side / 2 * (np.abs(c) + np.abs(s)) + 2
    x0 = np.minimum(np.maximum(np.floor(cx - half).astype(np.int64), 0), w - 1)
    y0 = np.minimum(np.maximum(np.floor(cy - half).astype(np.int64), 0), h - 1)
    x1 = np.maximum(np.minimum(np.ceil(cx + half).astype(np.int64) + 1, w), x0 + 1)
    y1 = np.maximum(np.minimum(np.ceil(cy + half).astype(np.int64) + 1, h), y0 + 1)
    return x0, y0, x1, y1


def _crop_matrices(cx, cy, side, c, s) -> np.ndarray:
    """`crop_matrix` of many squares at once, from their centres, sides and the cosine and
    sine of their angles: (M, 2, 3), the same arithmetic in the same order."""
    kk = 1.0 / side
    m = np.empty((len(side), 2, 3))
    m[:, 0, 0] = c * kk
    m[:, 0, 1] = s * kk
    m[:, 0, 2] = 0.5 - kk * (c * cx + s * cy)
    m[:, 1, 0] = -s * kk
    m[:, 1, 1] = c * kk
    m[:, 1, 2] = 0.5 - kk * (-s * cx + c * cy)
    return m


def patch_targets(truth: np.ndarray, mats: np.ndarray) -> np.ndarray:
    """Where each true point lies in its own patch: (K, 2), patch units with 0 at the centre."""
    t = np.asarray(truth, dtype=np.float64).reshape(-1, 2)
    return np.einsum("kij,kj->ki", mats[:, :, :2], t) + mats[:, :, 2] - 0.5


def from_patches(offsets: np.ndarray, mats: np.ndarray) -> np.ndarray:
    """`patch_targets`' inverse: (K, 2) offsets in patch units -> (K, 2) image pixels."""
    u = np.asarray(offsets, dtype=np.float64).reshape(-1, 2) + 0.5 - mats[:, :, 2]
    return np.einsum("kij,kj->ki", np.linalg.inv(mats[:, :, :2]), u)

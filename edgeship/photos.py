"""Unlabelled natural photographs that ship inside installed packages, expanded into a deterministic crop set.

scikit-learn's ``load_sample_images`` (china.jpg, flower.jpg) and the photographs bundled in scikit-image's
``skimage.data`` are read straight from the installed packages (nothing is downloaded). Each photo is cut in two
halves along its longer side: evaluation crops come from one half; the other is cut in two again, into a quarter for
calibration crops and a quarter for validation crops (which part goes where alternates from photo to photo). So no
pixel is in two splits: the float-layer search and every setting chosen on validation see pixels that calibration
did not fit its ranges to, as evaluation will. Each part yields square crops at several scales (of its half's shorter
side, so the quarters' crops are cut at the evaluation crops' pixel sizes, the largest capped by the quarter) and
positions, each also mirrored, resized to the model's input size.

With ``data.extra_eval_photos: opencv-doc`` the evaluation split also takes crops of the natural photographs among
OpenCV's sample data (Debian's ``opencv-doc``), each whole: those photos are in no calibration or validation crop, so
evaluation is widened beyond the 16 bundled photos without changing what calibration and the float-layer search see.

There are no labels: a model's accuracy on these crops is its agreement with the FP32 reference. ``PROBES``
name what an ImageNet classifier should see in a few whole photos; the export stage checks them, which proves
the preprocessing right.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeship.artifacts import remove_dead_spills, spill_prefix
from edgeship.errors import DataError
from edgeship.images import read_image
from edgeship.tensors import drop_mapped_pages

# (package, file): natural photographs only, no diagrams or microscopy; motorcycle_right is left out as the
# stereo twin of motorcycle_left.
PHOTOS: tuple[tuple[str, str], ...] = (
    ("sklearn", "china.jpg"), ("sklearn", "flower.jpg"),
    ("skimage", "astronaut.png"), ("skimage", "brick.png"), ("skimage", "camera.png"), ("skimage", "chelsea.png"),
    ("skimage", "clock_motion.png"), ("skimage", "coffee.png"), ("skimage", "coins.png"), ("skimage", "grass.png"),
    ("skimage", "gravel.png"), ("skimage", "hubble_deep_field.jpg"), ("skimage", "moon.png"),
    ("skimage", "motorcycle_left.png"), ("skimage", "rocket.jpg"), ("skimage", "retina.jpg"),
)
SCALES = (1.0, 0.8, 0.64, 0.5, 0.4)   # crop side as a fraction of the half's shorter side
POSITIONS = (0.0, 0.5, 1.0)           # where the crop sits in the slack along each axis
MAPPED_BLOCK = 64  # crops rendered or read at a time in a memory-mapped set
SPARE_CROPS = 512  # validation-quarter crops kept as the validation split (divergence, keep_float: auto)
INSTALL = "pip install 'edgeship[efficientnet]'"

# Debian's opencv-doc: the photographs of natural scenes among OpenCV's sample data, one of each scene (no stereo or flow
# twins, calibration boards, drawings, renders, paintings or text)
OPENCV_DOC = Path("/usr/share/doc/opencv-doc/examples")
OPENCV_PHOTOS: tuple[str, ...] = tuple(f"data/{name}" for name in (
    "aero1.jpg", "aloeL.jpg", "apple.jpg", "baboon.jpg", "basketball1.png", "board.jpg", "box_in_scene.png", "building.jpg",
    "butterfly.jpg", "chicky_512.png", "ela_original.jpg", "fruits.jpg", "graf1.png", "home.jpg", "leuvenA.jpg", "messi5.jpg",
    "orange.jpg", "squirrel_cls.jpg", "stuff.jpg")) + ("alphamat/input_images/plant.jpg",)
OPENCV_INSTALL = "apt-get install opencv-doc"

# ImageNet classes an FP32 classifier should give a center crop of the whole photo (any of them is right).
PROBES: dict[str, tuple[str, ...]] = {
    "flower.jpg": ("daisy",),
    "coffee.png": ("espresso", "cup", "coffee mug"),
    "chelsea.png": ("tabby", "tiger cat", "Egyptian cat"),
    "motorcycle_left.png": ("moped", "motor scooter"),
    "camera.png": ("tripod", "reflex camera"),
}


@dataclass(frozen=True)
class Crop:
    """One crop: ``box`` is (top, left, side) in the photo's pixels."""

    photo: str
    box: tuple[int, int, int]
    mirrored: bool


def package_folder(package: str) -> Path | None:
    """Where a package's bundled photos are, without importing it; None when it is not installed."""
    module = {"sklearn": "sklearn.datasets", "skimage": "skimage"}[package]
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    return root / ("images" if package == "sklearn" else "data")


def available_photos() -> dict[str, Path]:
    """File name → path of every listed photo installed here, in ``PHOTOS`` order."""
    found = {}
    for package, name in PHOTOS:
        folder = package_folder(package)
        if folder is not None and (folder / name).is_file():
            found[name] = folder / name
    if not found:
        raise DataError(f"no sample photos found (scikit-learn's sample images or scikit-image's data); install them with {INSTALL}")
    return found


def opencv_doc_photos(folder: Path = OPENCV_DOC) -> dict[str, Path]:
    """File name → path of every photo in ``OPENCV_PHOTOS``; a clear error when opencv-doc is not installed or lacks one."""
    missing = [name for name in OPENCV_PHOTOS if not (folder / name).is_file()]
    if missing:
        raise DataError(f"data.extra_eval_photos: {folder / missing[0]} not found ({len(missing)} of {len(OPENCV_PHOTOS)} "
                        f"opencv-doc photos missing); install them with `{OPENCV_INSTALL}` (make data does)")
    return {Path(name).name: folder / name for name in OPENCV_PHOTOS}


Region = tuple[int, int, int, int]  # (top, left, height, width) in a photo's pixels


def halves(height: int, width: int) -> tuple[Region, Region]:
    """The two halves of a photo, cut across its longer side."""
    return split_region((0, 0, height, width))


def split_region(region: Region) -> tuple[Region, Region]:
    """The two halves of ``region``, cut across its longer side."""
    top, left, height, width = region
    if width >= height:
        cut = width // 2
        return (top, left, height, cut), (top, left + cut, height, width - cut)
    cut = height // 2
    return (top, left, cut, width), (top + cut, left, height - cut, width)


def crops_in(photo: str, region: Region, scale_of: int | None = None) -> list[Crop]:
    """Square crops at every scale and position inside ``region``, plain and mirrored (duplicates removed). A crop's
    side is a scale of ``scale_of`` (default: the region's shorter side), at most the region's shorter side: a quarter
    cropped with its half's ``scale_of`` gives crops of the half's pixel sizes, not smaller ones that the resize to
    the model's input blurs more (on EfficientNet-Lite0 those were much harder than the evaluation crops for every
    reduced precision, FP16 included)."""
    top, left, height, width = region
    boxes: list[tuple[int, int, int]] = []
    for scale in SCALES:
        side = max(1, min(height, width, round(scale * (scale_of or min(height, width)))))
        for fy in POSITIONS:
            for fx in POSITIONS:
                box = (top + round(fy * (height - side)), left + round(fx * (width - side)), side)
                if box not in boxes:
                    boxes.append(box)
    return [Crop(photo, box, mirrored) for box in boxes for mirrored in (False, True)]


@dataclass(frozen=True)
class CropPlan:
    calibration: list[Crop]
    validation: list[Crop]
    evaluation: list[Crop]


def crop_plan(photos: dict[str, tuple[int, int]], evaluation_only: dict[str, tuple[int, int]] | None = None) -> CropPlan:
    """The crops of photos given as name → (height, width): evaluation from one half, calibration and validation from a
    quarter each of the other; which half, and which quarter, alternate by photo. Photos in ``evaluation_only`` give
    evaluation crops only, of the whole photo."""
    plan = CropPlan([], [], [])
    for index, (name, (height, width)) in enumerate(photos.items()):
        first, second = halves(height, width)
        rest, eval_half = (first, second) if index % 2 == 0 else (second, first)
        first, second = split_region(rest)
        cal_quarter, val_quarter = (first, second) if index // 2 % 2 == 0 else (second, first)
        half_side = min(rest[2:])  # the quarters' crops get the half's sizes, as evaluation's do
        plan.calibration.extend(crops_in(name, cal_quarter, scale_of=half_side))
        plan.validation.extend(crops_in(name, val_quarter, scale_of=half_side))
        plan.evaluation.extend(crops_in(name, eval_half))
    for name, (height, width) in (evaluation_only or {}).items():
        plan.evaluation.extend(crops_in(name, (0, 0, height, width)))
    return plan


def render(crops: list[Crop], images: dict[str, np.ndarray], size: tuple[int, int], out: np.ndarray | None = None) -> np.ndarray:
    """(N, H, W, 3) uint8: each crop cut out, mirrored when asked, resized (bilinear, antialiased) to ``size``; into
    ``out`` when given."""
    from PIL import Image

    out = np.empty((len(crops), size[0], size[1], 3), np.uint8) if out is None else out
    for i, crop in enumerate(crops):
        top, left, side = crop.box
        patch = Image.fromarray(images[crop.photo][top : top + side, left : left + side]).resize(size[::-1], Image.BILINEAR)
        out[i] = np.asarray(patch)[:, ::-1] if crop.mirrored else np.asarray(patch)
    return out


def render_mapped(crops: list[Crop], images: dict[str, np.ndarray], size: tuple[int, int], folder: Path) -> np.ndarray:
    """``render`` into a file under ``folder``, mapped read-only and unlinked at once: the crops take none of the
    process's memory until they are read, and the file is gone when the array is."""
    if not crops:
        return render(crops, images, size)
    folder.mkdir(parents=True, exist_ok=True)
    remove_dead_spills(folder, "crops")
    fd, name = tempfile.mkstemp(dir=folder, prefix=spill_prefix("crops"), suffix=".npy")
    os.close(fd)
    try:
        out = np.lib.format.open_memmap(name, mode="w+", dtype=np.uint8, shape=(len(crops), size[0], size[1], 3))
        for start in range(0, len(crops), MAPPED_BLOCK):
            render(crops[start : start + MAPPED_BLOCK], images, size, out=out[start : start + MAPPED_BLOCK])
            out.flush()
            drop_mapped_pages(out)
        del out
        return np.load(name, mmap_mode="r")
    finally:
        os.unlink(name)


def center_crop(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The largest centred square of ``image``, resized to ``size``: how the probes are shown to the model."""
    height, width = image.shape[:2]
    side = min(height, width)
    crop = Crop("", ((height - side) // 2, (width - side) // 2, side), False)
    return render([crop], {"": image}, size)[0]


@dataclass(frozen=True)
class PhotoCrops:
    calibration: np.ndarray            # (N, H, W, 3) uint8
    evaluation: np.ndarray
    spare: np.ndarray                  # validation-quarter crops: the validation split
    probes: dict[str, np.ndarray]      # photo name → its center crop, for the photos in PROBES
    photos: tuple[str, ...]
    fingerprint: str
    evaluation_only: tuple[str, ...] = ()   # photos whose crops are in the evaluation split only
    evaluation_photos: tuple[str, ...] = ()  # the photo each evaluation crop was cut from, in the split's order
    spare_photos: tuple[str, ...] = ()        # and each spare (validation) crop's


def load_crops(size: tuple[int, int], *, calibration_size: int | None, eval_size: int | None, seed: int,
               evaluation_only: dict[str, Path] | None = None, spill: Path | None = None) -> PhotoCrops:
    """The crop sets, each shuffled with ``seed`` and cut to its size (None keeps every crop). ``evaluation_only``: more
    photos (name → path) whose crops join the evaluation split; calibration and validation crops stay the same.
    ``spill``: a folder on disk for the evaluation crops (``render_mapped``), which a run reads only when it validates."""
    paths = available_photos()
    clash = set(paths) & set(evaluation_only or {})
    if clash:
        raise DataError(f"evaluation-only photos share a name with the bundled ones: {', '.join(sorted(clash))}")
    images = {name: read_image(path) for name, path in paths.items()}
    extra = {name: read_image(path) for name, path in (evaluation_only or {}).items()}
    plan = crop_plan({name: img.shape[:2] for name, img in images.items()}, {name: img.shape[:2] for name, img in extra.items()})
    images |= extra
    rng = np.random.default_rng(seed)
    cal_plan = _shuffled(plan.calibration, rng, calibration_size)
    spare_plan = _shuffled(plan.validation, rng, SPARE_CROPS)
    eval_plan = _shuffled(plan.evaluation, rng, eval_size)  # last: extra photos change it alone
    calibration = render(cal_plan, images, size)
    evaluation = render(eval_plan, images, size) if spill is None else render_mapped(eval_plan, images, size, spill)
    spare = render(spare_plan, images, size)
    probes = {name: center_crop(images[name], size) for name in PROBES if name in images}
    digest = hashlib.sha256()
    for name in images:
        digest.update(name.encode())
        digest.update(images[name].tobytes())
    digest.update(calibration.tobytes())
    for start in range(0, len(evaluation), MAPPED_BLOCK):  # a block at a time: mapped crops stay out of memory
        digest.update(evaluation[start : start + MAPPED_BLOCK].tobytes())
        drop_mapped_pages(evaluation)
    return PhotoCrops(calibration, evaluation, spare, probes, tuple(images), digest.hexdigest(), tuple(extra),
                      tuple(crop.photo for crop in eval_plan),
                      tuple(crop.photo for crop in spare_plan))


def _shuffled(crops: list[Crop], rng: np.random.Generator, count: int | None) -> list[Crop]:
    """The first ``count`` of ``crops`` in ``rng``'s order (None: all of them)."""
    return [crops[i] for i in rng.permutation(len(crops))][:count]


def judge_probes(logits: dict[str, np.ndarray], class_names: tuple[str, ...]) -> list[dict[str, object]]:
    """Each probe photo's top-5 classes from the model's ``logits`` and whether its top-1 is one it should see."""
    out: list[dict[str, object]] = []
    for photo, row in logits.items():
        row = np.asarray(row, np.float64).ravel()
        probs = np.exp(row - row.max())
        probs /= probs.sum()
        top5 = np.argsort(-row)[:5]
        predicted = class_names[int(top5[0])]
        out.append({"photo": photo, "expected": list(PROBES[photo]), "predicted": predicted, "ok": predicted in PROBES[photo],
                    "top5": [[class_names[int(i)], round(float(probs[i]), 4)] for i in top5]})
    return out

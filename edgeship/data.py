"""Datasets, splits, preprocessing and calibration sets.

The default data is Fashion-MNIST from the Debian package ``dataset-fashion-mnist``:
training and validation from the train set, a calibration set disjoint from both,
evaluation on the official 10,000 test images. Without the package, scikit-learn's
digits stand in, with a notice saying how to install the real data.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeship.errors import DataError
from edgeship.images import read_image
from edgeship.photos import load_crops, opencv_doc_photos
from edgeship.tensors import CalibrationSet, Feed, SearchSet, drop_mapped_pages, rows_of
from edgeship_deploy import preprocess as release_preprocess
from edgeship_deploy import resize

if TYPE_CHECKING:  # the recipe sits above this module: its sections are only annotations here
    from edgeship.recipe import CalibrationConfig, DataConfig, Preprocessing

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FASHION_MNIST_INSTALL = "sudo apt-get install dataset-fashion-mnist"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
ARRAY_SUFFIXES = frozenset({".npy", ".npz"})


@dataclass(frozen=True)
class Split:
    """Raw images (N, H, W) or (N, H, W, C) uint8 and their int64 labels (None: unlabelled); or, for ``arrays`` data,
    the model's named inputs as they are (``arrays``), with no images."""

    images: np.ndarray
    labels: np.ndarray | None
    arrays: Mapping[str, np.ndarray] | None = None
    groups: tuple[str, ...] = ()  # sample_photos: the photo of each crop (crops of one photo are correlated)

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values()))) if self.arrays else len(self.images)


def model_inputs(split: Split, p: Preprocessing, input_name: str, count: int | None = None) -> Feed:
    """The first ``count`` samples of a split as a feed: named arrays as they are, or images preprocessed under the
    model's one input name."""
    if split.arrays:
        return {name: np.ascontiguousarray(array[:count]) for name, array in split.arrays.items()}
    return {input_name: preprocess(split.images[:count], p)}


EMPTY = Split(np.empty((0, 0, 0, 3), np.uint8), None)


@dataclass(frozen=True)
class Dataset:
    name: str
    source: str
    classes: tuple[str, ...]
    train: Split
    val: Split
    calibration: Split
    eval: Split
    fingerprint: str
    probes: Mapping[str, np.ndarray] = field(default_factory=dict)  # photo name → raw image, for the export's sanity check
    substitute_for: str = ""  # the dataset the recipe asked for, when this one stands in for it, and why

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def labelled(self) -> bool:
        """Whether the evaluation split has labels; without them accuracy is agreement with the FP32 reference."""
        return self.eval.labels is not None


def scored_on_validation(dataset: Dataset) -> Dataset:
    """The dataset with its validation split in the evaluation split's place (``validate.split: validation``): what a
    search scores on, so the evaluation split is never what settings are chosen by. Its fingerprint is its own and
    covers the validation samples, so validation-split results are never taken for evaluation-split ones, nor reused
    after the validation samples change."""
    if not len(dataset.val):
        raise DataError(f"validate.split: validation: {dataset.name} has no validation split here (labelled data holds "
                        "data.val_size out of training)")
    samples = fingerprint_arrays(dataset.val.arrays or {"images": dataset.val.images})
    fingerprint = hashlib.sha256(f"{dataset.fingerprint}:scored-on-validation:{samples}".encode()).hexdigest()
    return dataclasses.replace(dataset, eval=dataset.val, fingerprint=fingerprint)


def preprocess(images: np.ndarray, p: Preprocessing) -> np.ndarray:
    """uint8 images (N, H, W[, C]) to float32 NCHW model inputs, with standard strides (``edgeship_deploy.preprocess``:
    one definition for qualification here and for a release on a device)."""
    try:
        return release_preprocess(images, p.model_dump())
    except ValueError as exc:
        raise DataError(str(exc)) from None


PREPROCESS_BLOCK = 64  # images preprocessed at a time when writing a split to a file


def save_preprocessed(path: Path, images: np.ndarray, p: Preprocessing) -> None:
    """``preprocess(images, p)`` written to the ``.npy`` at ``path`` a block at a time: the float32 split (4× the uint8
    images) is never whole in memory."""
    first = preprocess(images[:PREPROCESS_BLOCK], p)
    shape = (len(images), *first.shape[1:])
    with open(path, "wb") as out:
        np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(first.dtype), "fortran_order": False,
                                                  "shape": shape})
        out.write(first.tobytes())
        for start in range(PREPROCESS_BLOCK, len(images), PREPROCESS_BLOCK):
            out.write(preprocess(images[start : start + PREPROCESS_BLOCK], p).tobytes())
            drop_mapped_pages(images)  # memory-mapped images (``photos.render_mapped``) are read through, not held


@dataclass(frozen=True)
class LabelSpace:
    """A pretrained model's classes, for labelled images of one's own: ``names`` in output order, and ``index``, every
    name a class folder may carry → its output index."""

    names: tuple[str, ...]
    index: Mapping[str, int]
    description: str   # e.g. "the ImageNet classes of efficientnet_lite0"

    def index_of(self, folder: Path) -> int:
        try:
            return self.index[folder.name.lower()]
        except KeyError:
            raise DataError(f"{folder}: the class folder's name is not one of {self.description} (a class name, WordNet id or "
                            "output index, e.g. 'daisy', 'n11939491' or '985')") from None


def load_dataset(cfg: DataConfig, calibration: CalibrationConfig, *, seed: int, notice: Callable[[str], None] = print,
                 label_space: LabelSpace | None = None, spill: Path | None = None) -> Dataset:
    """Load the recipe's dataset and cut it into train / val / calibration / eval. ``label_space``: the pretrained model's
    classes, which an ``image_folder``'s class folders are named after (else the folders are the classes). ``spill``: a
    folder on disk where ``sample_photos`` keeps its evaluation crops, mapped, so they take no memory until read."""
    if cfg.dataset == "sample_photos":
        return _sample_photos(cfg, calibration, seed=seed, spill=spill)
    if cfg.dataset == "arrays":
        return _arrays(cfg, calibration, seed=seed)
    if cfg.dataset == "image_folder":
        return _image_folder(cfg, calibration, seed=seed, label_space=label_space)
    if cfg.dataset == "fashion_mnist":
        if _has_fashion_mnist(cfg.root):
            return _split(_read_fashion_mnist(cfg.root), cfg, calibration, seed=seed, name="fashion_mnist", source=str(cfg.root),
                          classes=FASHION_MNIST_CLASSES)
        if not cfg.fallback:
            raise DataError(f"{cfg.root}: Fashion-MNIST IDX files not found; install them with `{FASHION_MNIST_INSTALL}`")
        notice(f"Fashion-MNIST not found under {cfg.root}; using scikit-learn's digits instead. "
               f"For the real data: {FASHION_MNIST_INSTALL}")
        digits = _split(_read_digits(), cfg, calibration, seed=seed, name="digits", source="sklearn.datasets.load_digits",
                        classes=tuple(str(i) for i in range(10)))
        return dataclasses.replace(digits, substitute_for=f"fashion_mnist (not found under {cfg.root}; install: {FASHION_MNIST_INSTALL})")
    return _split(_read_digits(), cfg, calibration, seed=seed, name="digits", source="sklearn.datasets.load_digits",
                  classes=tuple(str(i) for i in range(10)))


def substitution_note(record: Mapping[str, Any] | None) -> str:
    """What a report says first when the run's data stood in for the data its recipe asked for; ``""`` when it did not."""
    record = record or {}
    wanted = record.get("substitute_for")
    if not wanted:
        return ""
    return (f"This run used {record.get('name')} ({record.get('source')}) in place of {wanted}: every figure and gate here is "
            f"measured on {record.get('name')}, not on the data the recipe asked for.")


def _sample_photos(cfg: DataConfig, calibration: CalibrationConfig, *, seed: int, spill: Path | None = None) -> Dataset:
    """Crops of the photographs bundled with scikit-learn and scikit-image: calibration, validation and evaluation, each
    from its own part of every photo; no labels, no training data (see ``edgeship.photos``)."""
    size = cfg.preprocessing.resize
    if size is None:  # the recipe validator requires it; a direct caller may not
        raise DataError("data.preprocessing.resize: the sample_photos crops need a size (height, width), e.g. [224, 224]")
    extra = opencv_doc_photos() if cfg.extra_eval_photos == "opencv-doc" else None
    crops = load_crops(size, calibration_size=0 if calibration.source is not None else calibration.size,
                       eval_size=cfg.eval_size, seed=seed, evaluation_only=extra, spill=spill)
    cal = EMPTY if calibration.source is not None else Split(crops.calibration, None)
    val = Split(crops.spare, None, groups=crops.spare_photos)
    bundled = [name for name in crops.photos if name not in crops.evaluation_only]
    source = f"{len(bundled)} photos bundled with scikit-learn and scikit-image: " + ", ".join(bundled)
    if crops.evaluation_only:
        source += f"; for evaluation only, {len(crops.evaluation_only)} photos of opencv-doc: " + ", ".join(crops.evaluation_only)
    return Dataset(name="sample_photos", source=source, classes=(), train=EMPTY, val=val, calibration=cal,
                   eval=Split(crops.evaluation, None, groups=crops.evaluation_photos), fingerprint=crops.fingerprint,
                   probes=crops.probes)


MIN_ARRAY_SAMPLES = 10  # fewer cannot be cut into evaluation, calibration and validation samples


def _arrays(cfg: DataConfig, calibration: CalibrationConfig, *, seed: int) -> Dataset:
    """A model's named inputs from an ``.npz``, cut at random (seeded) into disjoint evaluation, calibration, validation
    and training samples: a quarter each at most (``eval_size``, ``calibration.size``, ``val_size`` cap them), the rest
    training. No labels."""
    assert cfg.path is not None  # the recipe requires it
    arrays = read_arrays(cfg.path)
    n = len(next(iter(arrays.values())))
    order = np.random.default_rng(seed).permutation(n)
    quarter = n // 4
    n_eval = min(cfg.eval_size or quarter, quarter)
    n_cal = 0 if calibration.source is not None else min(calibration.size, quarter)
    n_val = min(cfg.val_size, quarter)
    cuts = np.cumsum([n_eval, n_cal, n_val])
    parts = np.split(order, cuts)
    if cfg.train_size is not None:
        parts[3] = parts[3][: cfg.train_size]

    def take(index: np.ndarray) -> Split:
        index = np.sort(index)
        return Split(EMPTY.images, None, {name: array[index] for name, array in arrays.items()})

    digest = hashlib.sha256(fingerprint_arrays(arrays).encode())
    digest.update(order.tobytes())
    digest.update(json.dumps({"eval": n_eval, "cal": n_cal, "val": n_val, "train": len(parts[3])}).encode())
    return Dataset(name="arrays", source=str(cfg.path), classes=(), train=take(parts[3]), val=take(parts[2]), calibration=take(parts[1]),
                   eval=take(parts[0]), fingerprint=digest.hexdigest())


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Named arrays from an ``.npz``: one per model input, N samples each, numeric and finite; a ``DataError`` naming the
    file and what was expected otherwise."""
    if path.suffix.lower() != ".npz":
        raise DataError(f"{path}: expected an .npz of named arrays, one per model input (numpy.savez(path, input_ids=…, …))")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except Exception as exc:  # noqa: BLE001 - numpy fails on a damaged file in many ways
        raise DataError(f"{path}: cannot read array file ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
    if not arrays:
        raise DataError(f"{path}: holds no arrays; expected one per model input")
    lengths = {name: (len(array) if array.ndim else 0) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise DataError(f"{path}: the arrays hold different numbers of samples ({', '.join(f'{k}: {v}' for k, v in lengths.items())}); "
                        "each needs one row per sample")
    for name, array in arrays.items():
        if array.dtype.kind not in "biuf":
            raise DataError(f"{path}: array {name!r} has dtype {array.dtype}; expected numbers (float, int or bool)")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise DataError(f"{path}: array {name!r} contains NaN or inf; expected finite values")
    n = next(iter(lengths.values()))
    if n < MIN_ARRAY_SAMPLES:
        raise DataError(f"{path}: {n} samples; at least {MIN_ARRAY_SAMPLES} are needed to cut evaluation, calibration and "
                        "validation samples")
    return arrays


def fingerprint_arrays(arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 of named arrays: names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = arrays[name]
        digest.update(json.dumps({"name": name, "dtype": str(array.dtype), "shape": array.shape}).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _image_folder(cfg: DataConfig, calibration: CalibrationConfig, *, seed: int, label_space: LabelSpace | None) -> Dataset:
    """The user's labelled images: ``root/train/<class>/*`` (training, validation and calibration are cut from it) and
    ``root/test/<class>/*`` (evaluation). Read whole into memory, resized to ``preprocessing.resize``."""
    root = cfg.root
    layout = f"image_folder expects {root}/train/<class>/<images> and {root}/test/<class>/<images>"
    for part in ("train", "test"):
        if not (root / part).is_dir():
            raise DataError(f"data.root: {root / part} is not a folder; {layout}")
    train_folders = _class_folders(root / "train", layout)
    if label_space is None:
        classes = tuple(folder.name for folder in train_folders)
        index = {folder.name: i for i, folder in enumerate(train_folders)}
    else:
        classes = label_space.names
        index = {folder.name: label_space.index_of(folder) for folder in train_folders}
    test_folders = _class_folders(root / "test", layout)
    for folder in test_folders:
        if folder.name not in index:
            if label_space is None:
                raise DataError(f"{folder}: a test class with no train folder; the classes are {', '.join(classes)}")
            index[folder.name] = label_space.index_of(folder)
    train = _read_classes(train_folders, index, cfg.preprocessing)
    test = _read_classes(test_folders, index, cfg.preprocessing)
    mixed = np.random.default_rng(seed).permutation(len(test))  # so that eval_size takes every class, not the first ones
    test = Split(test.images[mixed], test.labels[mixed])  # type: ignore[index]
    return _split((train, test), cfg, calibration, seed=seed, name="image_folder", source=str(root), classes=classes)


def _class_folders(folder: Path, layout: str) -> list[Path]:
    folders = sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))
    if not folders:
        raise DataError(f"{folder}: no class folders; {layout}")
    return folders


def _read_classes(folders: list[Path], index: Mapping[str, int], p: Preprocessing) -> Split:
    """Every image of every class folder (sorted), at ``p.resize`` or the one size they share."""
    images: list[np.ndarray] = []
    labels: list[int] = []
    for folder in folders:
        files = sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."))
        if not files:
            raise DataError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        for path in files:
            image = read_image(path, p.color)
            image = image[..., None] if image.ndim == 2 else image
            images.append(resize(image[None], p.resize)[0] if p.resize is not None and image.shape[:2] != tuple(p.resize) else image)
            labels.append(index[folder.name])
    sizes = sorted({image.shape for image in images})
    if len(sizes) > 1:
        raise DataError(f"{folders[0].parent}: images differ in size ({sizes[0]}, {sizes[-1]}, …); set data.preprocessing.resize")
    return Split(np.stack(images), np.asarray(labels, np.int64))


def _has_fashion_mnist(root: Path) -> bool:
    return all(_idx_path(root, stem) is not None for stem in _FASHION_FILES.values())


_FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _idx_path(root: Path, stem: str) -> Path | None:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) as used by MNIST-style datasets."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read IDX file: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise DataError(f"{path}: IDX header promises {expected} bytes of data, file has {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _read_fashion_mnist(root: Path) -> tuple[Split, Split]:
    arrays = {key: read_idx(_idx_path(root, stem)) for key, stem in _FASHION_FILES.items()}  # type: ignore[arg-type]
    train = Split(arrays["train_images"], arrays["train_labels"].astype(np.int64))
    test = Split(arrays["test_images"], arrays["test_labels"].astype(np.int64))
    return train, test


def _read_digits() -> tuple[Split, Split]:
    """scikit-learn digits (1,797 8×8 images, 0..16) as uint8, 20% held out as the test split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(12345).permutation(len(labels))
    cut = len(labels) // 5
    test, train = order[:cut], order[cut:]
    return Split(images[train], labels[train]), Split(images[test], labels[test])


def _split(parts: tuple[Split, Split], cfg: DataConfig, calibration: CalibrationConfig, *, seed: int, name: str, source: str,
           classes: tuple[str, ...]) -> Dataset:
    """Cut the train set into calibration, validation and training (disjoint, seeded)."""
    train_full, test = parts
    n = len(train_full)
    order = np.random.default_rng(seed).permutation(n)
    # On small data (the digits fallback), the held-out parts shrink so training keeps most of it.
    n_cal = 0 if calibration.source is not None else min(calibration.size, n // 5)
    n_val = min(cfg.val_size, n // 5)
    cal_idx, val_idx, train_idx = order[:n_cal], order[n_cal : n_cal + n_val], order[n_cal + n_val :]
    if cfg.train_size is not None:
        train_idx = train_idx[: cfg.train_size]
    eval_split = test if cfg.eval_size is None else Split(test.images[: cfg.eval_size], test.labels[: cfg.eval_size])

    def take(idx: np.ndarray) -> Split:
        return Split(train_full.images[np.sort(idx)], train_full.labels[np.sort(idx)])

    digest = hashlib.sha256()
    for array in (train_full.images, train_full.labels, eval_split.images, eval_split.labels, order):
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(json.dumps({"cal": n_cal, "val": n_val, "train": len(train_idx), "name": name}).encode())
    return Dataset(name=name, source=source, classes=classes, train=take(train_idx), val=take(val_idx),
                   calibration=take(cal_idx), eval=eval_split, fingerprint=digest.hexdigest())


def fingerprint_samples(samples: np.ndarray, preprocessing: Preprocessing, origin: str) -> str:
    """sha256 of the samples (shape, dtype, bytes), the preprocessing and where they came from."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"shape": samples.shape, "dtype": str(samples.dtype), "origin": origin,
                              "preprocessing": preprocessing.model_dump(mode="json")}, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(samples).tobytes())
    return digest.hexdigest()


def calibration_set(dataset: Dataset, cfg: CalibrationConfig, preprocessing: Preprocessing, *,
                    input_shape: tuple[int, ...]) -> CalibrationSet:
    """The calibration set: the held-out train images (or named arrays), or the recipe's own ``source``."""
    if dataset.calibration.arrays or (cfg.source is not None and dataset.name == "arrays"):
        arrays = dict(dataset.calibration.arrays) if cfg.source is None else _calibration_arrays(cfg.source, dataset)
        arrays = {name: array[: cfg.size] for name, array in arrays.items()}
        return CalibrationSet(arrays, fingerprint_arrays(arrays))
    if cfg.source is None:
        samples = preprocess(dataset.calibration.images, preprocessing)
        origin = f"{dataset.name}:train-holdout"
    else:
        samples = load_samples(cfg.source, preprocessing, input_shape=input_shape)[: cfg.size]
        origin = str(cfg.source)
    check_samples(samples, origin, input_shape)
    return CalibrationSet(samples, fingerprint_samples(samples, preprocessing, origin))


def _calibration_arrays(source: Path, dataset: Dataset) -> dict[str, np.ndarray]:
    """A calibration ``.npz`` of named arrays for a model fed named arrays: the evaluation data's names and dtypes."""
    arrays = read_arrays(source)
    expected = dataset.eval.arrays or {}
    if set(arrays) != set(expected):
        raise DataError(f"{source}: calibration arrays {sorted(arrays)}; the data's are {sorted(expected)}")
    for name, array in arrays.items():
        if array.dtype != expected[name].dtype or array.shape[1:] != expected[name].shape[1:]:
            raise DataError(f"{source}: calibration array {name!r} is {array.dtype} {array.shape[1:]} per sample; the data's is "
                            f"{expected[name].dtype} {expected[name].shape[1:]}")
    return arrays


SEARCH_SAMPLES = 2000  # validation samples a build's own search (keep_float: auto) scores candidates on


def search_set(dataset: Dataset, preprocessing: Preprocessing, size: int = SEARCH_SAMPLES) -> SearchSet | None:
    """The validation split as a build's search samples (neither calibration nor evaluation), None when there is none."""
    if not len(dataset.val):
        return None
    if dataset.val.arrays:
        arrays = dict(rows_of(dataset.val.arrays, 0, size))
        return SearchSet(arrays, None, fingerprint_arrays(arrays))
    samples = preprocess(dataset.val.images[:size], preprocessing)
    labels = None if dataset.val.labels is None else dataset.val.labels[:size]
    fingerprint = fingerprint_samples(samples, preprocessing, f"{dataset.name}:validation")
    if labels is not None:
        fingerprint = hashlib.sha256(fingerprint.encode() + np.ascontiguousarray(labels).tobytes()).hexdigest()
    return SearchSet(samples, labels, fingerprint, tuple(dataset.val.groups[:size]) or None)


def load_samples(source: Path, preprocessing: Preprocessing, *, input_shape: tuple[int, ...], what: str = "calibration data") -> np.ndarray:
    """Model inputs from a folder of images or .npy/.npz files, or from one such file.

    uint8 arrays are raw images (N, H, W[, C]) and get the recipe's preprocessing;
    float arrays are taken as ready model inputs (N, C, H, W).
    """
    files = sorted(p for p in source.iterdir() if p.is_file() and not p.name.startswith(".")) if source.is_dir() else [source]
    usable = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES | ARRAY_SUFFIXES]
    if not usable:
        raise DataError(f"{source}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) or arrays (.npy, .npz) found")
    batches: list[np.ndarray] = []
    images: list[np.ndarray] = []
    for path in usable:
        if path.suffix.lower() in ARRAY_SUFFIXES:
            batches.extend(_array_samples(path, preprocessing, input_shape))
        else:
            images.append(read_image(path, preprocessing.color))
    if images:
        if len({img.shape for img in images}) > 1:
            if preprocessing.resize is None:
                raise DataError(f"{source}: images differ in size {sorted({i.shape for i in images})}; set preprocessing.resize")
            images = [resize(img[None], preprocessing.resize)[0] for img in images]
        batches.append(preprocess(np.stack(images), preprocessing))
    samples = np.concatenate(batches) if batches else np.empty((0, *input_shape), np.float32)
    if len(samples) == 0:
        raise DataError(f"{source}: the {what} is empty")
    return samples


def _array_samples(path: Path, p: Preprocessing, input_shape: tuple[int, ...]) -> list[np.ndarray]:
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                arrays = [archive[key] for key in archive.files]
        else:
            arrays = [np.load(path, allow_pickle=False)]
    except Exception as exc:  # noqa: BLE001 - numpy fails on a damaged file in many ways (EOFError, BadZipFile, ValueError)
        raise DataError(f"{path}: cannot read array file ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
    out = []
    for array in arrays:
        if array.dtype == np.uint8:
            images = array if array.ndim >= 3 else array[None]
            if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3, 4)) or 0 in images.shape[1:]:
                raise DataError(f"{path}: uint8 images must be (H, W), (N, H, W) or (N, H, W, C) with C 1, 3 or 4, got shape {array.shape}")
            out.append(preprocess(images, p))
        elif array.dtype in (np.float32, np.float64):
            with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, which check_samples reports
                batch = array.astype(np.float32)
            if batch.ndim == len(input_shape):
                batch = batch[None]
            if batch.shape[1:] != tuple(input_shape):
                raise DataError(f"{path}: float samples must have shape (N, {', '.join(map(str, input_shape))}), got {array.shape}")
            out.append(batch)
        else:
            raise DataError(f"{path}: expected uint8 images or float32 model inputs, got dtype {array.dtype}")
    return out


def check_samples(samples: np.ndarray, origin: str, input_shape: tuple[int, ...], *, what: str = "calibration") -> None:
    """Non-empty, the model's input shape, finite: else a ``DataError`` naming ``origin``."""
    if len(samples) == 0:
        raise DataError(f"{origin}: the {what} set is empty")
    if samples.shape[1:] != tuple(input_shape):
        raise DataError(f"{origin}: {what} samples have shape {samples.shape[1:]}, the model expects {tuple(input_shape)}")
    finite = np.isfinite(samples)
    if not finite.all():
        first = int(np.argmin(finite.reshape(len(samples), -1).all(axis=1)))
        counts = f"{int(np.isnan(samples).sum())} NaN, {int(np.isinf(samples).sum())} inf"
        raise DataError(f"{origin}: {what} data contains NaN or inf ({counts}; first in sample {first}); expected finite values")

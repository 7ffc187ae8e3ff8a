from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeship.data import (
    EMPTY,
    calibration_set,
    load_dataset,
    load_samples,
    preprocess,
    read_idx,
    save_preprocessed,
    scored_on_validation,
    search_set,
)
from edgeship.errors import DataError
from edgeship.recipe import CalibrationConfig, DataConfig, Preprocessing

from conftest import HAS_FASHION_MNIST

GRAY = Preprocessing()
SHAPE = (1, 28, 28)


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def fake_fashion_mnist(root: Path, n_train: int = 300, n_test: int = 50) -> None:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    for stem, array in (("train-images-idx3-ubyte", rng.integers(0, 256, (n_train, 28, 28))),
                        ("train-labels-idx1-ubyte", rng.integers(0, 10, n_train)),
                        ("t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28))),
                        ("t10k-labels-idx1-ubyte", rng.integers(0, 10, n_test))):
        (root / f"{stem}.gz").write_bytes(gzip.compress(idx_bytes(array)))


def test_read_idx_plain_and_gzip(tmp_path: Path) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(array))
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(array)))
    assert (read_idx(tmp_path / "a") == array).all()
    assert (read_idx(tmp_path / "a.gz") == array).all()


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01x")
    with pytest.raises(DataError, match="not an unsigned-byte IDX"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(idx_bytes(np.zeros((4, 2), np.uint8))[:-3])
    with pytest.raises(DataError, match="promises 8 bytes"):
        read_idx(tmp_path / "short")


def test_splits_are_disjoint_and_seeded(tmp_path: Path) -> None:
    fake_fashion_mnist(tmp_path)
    cfg = DataConfig(root=tmp_path, val_size=40)
    first = load_dataset(cfg, CalibrationConfig(size=30), seed=0)
    assert (len(first.calibration), len(first.val), len(first.train), len(first.eval)) == (30, 40, 230, 50)
    rows = {split: {r.tobytes() for r in getattr(first, split).images} for split in ("train", "val", "calibration")}
    assert not rows["train"] & rows["val"] and not rows["train"] & rows["calibration"] and not rows["val"] & rows["calibration"]
    again = load_dataset(cfg, CalibrationConfig(size=30), seed=0)
    assert again.fingerprint == first.fingerprint and (again.calibration.images == first.calibration.images).all()
    assert load_dataset(cfg, CalibrationConfig(size=30), seed=1).fingerprint != first.fingerprint


@pytest.mark.skipif(not HAS_FASHION_MNIST, reason="Debian package dataset-fashion-mnist is not installed (make test installs it)")
def test_real_fashion_mnist_default_splits() -> None:
    data = load_dataset(DataConfig(), CalibrationConfig(), seed=0)
    assert data.name == "fashion_mnist"
    assert (len(data.calibration), len(data.val), len(data.train), len(data.eval)) == (1000, 5000, 54000, 10000)
    assert data.eval.images.shape == (10000, 28, 28) and set(np.unique(data.eval.labels)) == set(range(10))


def test_missing_dataset_falls_back_to_digits_with_a_notice(tmp_path: Path) -> None:
    notices: list[str] = []
    data = load_dataset(DataConfig(root=tmp_path / "absent"), CalibrationConfig(), seed=0, notice=notices.append)
    assert data.name == "digits" and len(data.eval) == 359
    assert len(notices) == 1 and "apt-get install dataset-fashion-mnist" in notices[0]
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset(DataConfig(root=tmp_path / "absent", fallback=False), CalibrationConfig(), seed=0)


def test_preprocess_normalizes_to_nchw_float32() -> None:
    images = np.full((2, 4, 5), 255, np.uint8)
    out = preprocess(images, Preprocessing(mean=(0.5,), std=(0.25,)))
    assert out.shape == (2, 1, 4, 5) and out.dtype == np.float32
    assert np.allclose(out, 2.0)
    rgb = preprocess(images, Preprocessing(color="rgb", mean=(0.0,), std=(1.0,), resize=(8, 8)))
    assert rgb.shape == (2, 3, 8, 8)


def _whole_set_at_once(images: np.ndarray, p: Preprocessing) -> np.ndarray:
    """The former preprocessing: every image at once, NHWC float32 then one transposing copy."""
    from edgeship_deploy import resize

    images = images[..., None] if images.ndim == 3 else images
    if p.resize is not None and images.shape[1:3] != tuple(p.resize):
        images = resize(images, tuple(p.resize))
    channels = 1 if p.color == "gray" else 3
    if images.shape[-1] != channels:
        images = np.repeat(images, channels, axis=-1) if images.shape[-1] == 1 else images[..., :3].mean(axis=-1, keepdims=True)
    x = images.astype(np.float32) * np.float32(p.scale)
    mean, std = (np.asarray(v, np.float32).reshape(1, 1, 1, -1) for v in (p.mean, p.std))
    return np.array(((x - mean) / std).transpose(0, 3, 1, 2), order="C", copy=True)


@pytest.mark.parametrize("shape, settings", [
    ((150, 9, 7, 3), {"color": "rgb", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "scale": 1 / 255}),
    ((130, 9, 7), {"color": "rgb", "mean": (1.0,), "std": (1.0,), "scale": 1 / 127.5, "resize": (5, 6)}),
    ((70, 9, 7, 3), {"color": "gray", "mean": (0.5,), "std": (0.25,)}),
], ids=["rgb per-channel mean", "grey made rgb and resized", "rgb made grey"])
def test_preprocess_in_blocks_and_channels_equals_the_whole_set_at_once(shape: tuple[int, ...], settings: dict) -> None:
    """More images than one block (64): every value bit-identical to the whole-set formula, with standard strides."""
    images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    p = Preprocessing(**settings)
    out = preprocess(images, p)
    expected = _whole_set_at_once(images, p)
    assert out.shape == expected.shape and out.flags["C_CONTIGUOUS"]
    assert np.array_equal(out.view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("count", [1, 64, 150])
def test_a_split_saved_preprocessed_block_by_block_is_the_whole_set_preprocessed(tmp_path: Path, count: int) -> None:
    images = np.random.default_rng(0).integers(0, 256, (count, 9, 7, 3), dtype=np.uint8)
    p = Preprocessing(color="rgb", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), scale=1 / 255)
    save_preprocessed(tmp_path / "x.npy", images, p)
    saved, expected = np.load(tmp_path / "x.npy"), preprocess(images, p)
    assert saved.shape == expected.shape and saved.dtype == expected.dtype
    assert np.array_equal(saved.view(np.uint32), expected.view(np.uint32))


def test_sample_photos_with_opencv_doc_photos_widen_only_the_evaluation_split() -> None:
    photos = Preprocessing(color="rgb", resize=(16, 16))
    plain = load_dataset(DataConfig(dataset="sample_photos", preprocessing=photos), CalibrationConfig(size=50), seed=0)
    wide = load_dataset(DataConfig(dataset="sample_photos", preprocessing=photos, extra_eval_photos="opencv-doc"),
                        CalibrationConfig(size=50), seed=0)
    assert np.array_equal(wide.calibration.images, plain.calibration.images) and np.array_equal(wide.val.images, plain.val.images)
    assert len(wide.eval.images) >= len(plain.eval.images) + 20 * 70  # about 78 crops a photo
    assert "for evaluation only, 20 photos of opencv-doc: aero1.jpg" in wide.source and "opencv-doc" not in plain.source
    assert wide.fingerprint != plain.fingerprint
    assert len(wide.eval.groups) == len(wide.eval.images) and "aero1.jpg" in wide.eval.groups and "aero1.jpg" not in plain.eval.groups
    on_validation = scored_on_validation(wide)  # the photo of each crop follows the split into the evaluation's place
    assert len(on_validation.eval.groups) == len(on_validation.eval.images) == 512 and "aero1.jpg" not in on_validation.eval.groups
    search = search_set(plain, photos, size=300)  # a build's search samples keep their photos, for its figures' intervals
    assert search is not None and search.groups == plain.val.groups[:300] and len(set(search.groups)) > 1


def test_release_preprocessing_refuses_a_mean_per_channel_of_another_count() -> None:
    """A recipe cannot say this (its model refuses it); a release document edited by hand can."""
    from edgeship_deploy import preprocess as release_preprocess

    settings = {**Preprocessing().model_dump(), "mean": [0.1, 0.2, 0.3]}
    with pytest.raises(ValueError, match="mean has 3 values for 1-channel inputs"):
        release_preprocess(np.zeros((2, 4, 4), np.uint8), settings)


def test_calibration_fingerprint_follows_samples_and_preprocessing(tmp_path: Path) -> None:
    fake_fashion_mnist(tmp_path)
    data = load_dataset(DataConfig(root=tmp_path, val_size=40), CalibrationConfig(size=30), seed=0)
    a = calibration_set(data, CalibrationConfig(size=30), GRAY, input_shape=SHAPE)
    b = calibration_set(data, CalibrationConfig(size=30), GRAY, input_shape=SHAPE)
    c = calibration_set(data, CalibrationConfig(size=30), Preprocessing(mean=(0.5,)), input_shape=SHAPE)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert len(a) == 30 and a[0]["input"].shape == (1, 1, 28, 28) and len(list(a)) == len(list(a))


def test_user_calibration_folder_of_images_and_arrays(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(tmp_path / f"img{i}.png")
    np.save(tmp_path / "raw.npy", rng.integers(0, 256, (4, 28, 28), dtype=np.uint8))
    np.savez(tmp_path / "ready.npz", x=rng.normal(size=(5, 1, 28, 28)).astype(np.float32))
    samples = load_samples(tmp_path, GRAY, input_shape=SHAPE)
    assert samples.shape == (12, 1, 28, 28) and samples.dtype == np.float32


@pytest.mark.parametrize(
    ("name", "content", "pattern"),
    [
        ("nan.npy", np.full((2, 1, 28, 28), np.nan, np.float32), "NaN or inf"),
        ("shape.npy", np.zeros((2, 3, 28, 28), np.float32), r"must have shape \(N, 1, 28, 28\)"),
        ("dtype.npy", np.zeros((2, 28, 28), np.int64), "expected uint8 images or float32"),
        ("broken.png", b"not a png", "cannot read image"),
    ],
)
def test_bad_calibration_data_names_the_file(tmp_path: Path, name: str, content: object, pattern: str) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        np.save(path, content)
    with pytest.raises(DataError, match=pattern) as err:
        fake_fashion_mnist(tmp_path / "fm")
        data = load_dataset(DataConfig(root=tmp_path / "fm", val_size=40), CalibrationConfig(source=path), seed=0)
        calibration_set(data, CalibrationConfig(source=path), GRAY, input_shape=SHAPE)
    assert name in str(err.value)


def test_empty_calibration_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(DataError, match="no images"):
        load_samples(tmp_path, GRAY, input_shape=SHAPE)


def test_images_of_different_sizes_need_resize(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((30, 20), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(DataError, match="differ in size"):
        load_samples(tmp_path, GRAY, input_shape=SHAPE)
    resized = load_samples(tmp_path, Preprocessing(resize=(28, 28)), input_shape=SHAPE)
    assert resized.shape == (2, 1, 28, 28)


def image_folder(root: Path, classes: dict[str, dict[str, int]], size: tuple[int, int] = (12, 10)) -> Path:
    """root/<part>/<class>/<i>.png: ``classes[part][name]`` images of one grey level per class, numbered from 0."""
    for part, counts in classes.items():
        for c, (name, n) in enumerate(sorted(counts.items())):
            (root / part / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((*size, 3), 20 * c + i, np.uint8)).save(root / part / name / f"{i}.png")
    return root


def folder_config(root: Path, **preprocessing: object) -> DataConfig:
    return DataConfig(dataset="image_folder", root=root, val_size=2,
                      preprocessing=Preprocessing(color="rgb", mean=(0.0,), std=(1.0,), **preprocessing))


def test_image_folder_classes_are_the_sorted_folders_and_splits_are_disjoint(tmp_path: Path) -> None:
    root = image_folder(tmp_path, {"train": {"cat": 6, "ant": 5, "bee": 4}, "test": {"ant": 2, "bee": 2, "cat": 3}})
    data = load_dataset(folder_config(root, resize=(8, 8)), CalibrationConfig(size=3), seed=0)
    assert data.classes == ("ant", "bee", "cat") and data.labelled
    assert (len(data.train), len(data.val), len(data.calibration), len(data.eval)) == (10, 2, 3, 7)
    assert data.eval.images.shape == (7, 8, 8, 3) and sorted(data.eval.labels.tolist()) == [0, 0, 1, 1, 2, 2, 2]
    # every image's grey level is 20 × class + index: labels follow folders, and no training image is held out twice
    seen = np.concatenate([data.train.images[:, 0, 0, 0], data.val.images[:, 0, 0, 0], data.calibration.images[:, 0, 0, 0]])
    assert sorted(seen.tolist()) == [0, 1, 2, 3, 4, 20, 21, 22, 23, 40, 41, 42, 43, 44, 45]
    assert all(level // 20 == label for level, label in zip(data.train.images[:, 0, 0, 0], data.train.labels, strict=True))
    again = load_dataset(folder_config(root, resize=(8, 8)), CalibrationConfig(size=3), seed=0)
    assert again.fingerprint == data.fingerprint


def test_image_folder_named_after_a_pretrained_models_classes(tmp_path: Path) -> None:
    from edgeship.zoo.pretrained import label_space

    root = image_folder(tmp_path, {"train": {"daisy": 5, "n07920052": 5}, "test": {"Daisy": 1, "967": 2}})
    data = load_dataset(folder_config(root), CalibrationConfig(size=1), seed=0, label_space=label_space("efficientnet_lite0"))
    assert len(data.classes) == 1000 and data.classes[985] == "daisy"
    assert sorted(set(data.train.labels.tolist())) == [967, 985] and sorted(data.eval.labels.tolist()) == [967, 967, 985]


@pytest.mark.parametrize(("classes", "pattern"), [
    ({"train": {"ant": 2}}, r"test is not a folder; image_folder expects"),
    ({"train": {"ant": 2}, "test": {"bee": 1}}, r"test/bee: a test class with no train folder; the classes are ant"),
    ({"train": {"ant": 2, "bee": 0}, "test": {"ant": 1}}, r"train/bee: no images"),
])
def test_image_folder_errors_name_the_folder(tmp_path: Path, classes: dict[str, dict[str, int]], pattern: str) -> None:
    root = image_folder(tmp_path, classes)
    with pytest.raises(DataError, match=pattern):
        load_dataset(folder_config(root), CalibrationConfig(size=1), seed=0)


def test_image_folder_class_not_in_the_label_space(tmp_path: Path) -> None:
    from edgeship.zoo.pretrained import label_space

    root = image_folder(tmp_path, {"train": {"crane": 1}, "test": {"crane": 1}})  # two ImageNet classes: use the WordNet id
    with pytest.raises(DataError, match=r"train/crane: the class folder's name is not one of the 1000 imagenet classes"):
        load_dataset(folder_config(root), CalibrationConfig(size=1), seed=0, label_space=label_space("efficientnet_lite0"))


def test_image_folder_of_mixed_sizes_needs_resize(tmp_path: Path) -> None:
    root = image_folder(tmp_path, {"train": {"ant": 2}, "test": {"ant": 1}})
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(root / "train" / "ant" / "small.png")
    with pytest.raises(DataError, match=r"images differ in size .*set data.preprocessing.resize"):
        load_dataset(folder_config(root), CalibrationConfig(size=1), seed=0)
    assert load_dataset(folder_config(root, resize=(6, 6)), CalibrationConfig(size=1), seed=0).train.images.shape[1:] == (6, 6, 3)


def test_scoring_on_validation_swaps_the_split_and_keys_it_apart() -> None:
    dataset = load_dataset(DataConfig(dataset="digits", val_size=100), CalibrationConfig(size=50), seed=0)
    scored = scored_on_validation(dataset)
    assert scored.eval is dataset.val and scored.val is dataset.val and scored.train is dataset.train
    assert scored.fingerprint != dataset.fingerprint  # a validation-split result is never reused as an evaluation-split one
    other_val = dataclasses.replace(dataset.val, images=dataset.val.images[::-1].copy())
    assert scored_on_validation(dataclasses.replace(dataset, val=other_val)).fingerprint != scored.fingerprint, \
        "other validation samples under the same data fingerprint: not the same results"
    with pytest.raises(DataError, match="validate.split: validation: .* has no validation split"):
        scored_on_validation(dataclasses.replace(dataset, val=EMPTY))

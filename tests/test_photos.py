import numpy as np
import pytest

from edgeship import photos
from edgeship.photos import Crop, crop_plan, crops_in, halves, judge_probes, load_crops, render, split_region


def _overlap(a: Crop, b: Crop) -> bool:
    (ay, ax, aside), (by, bx, bside) = a.box, b.box
    return ay < by + bside and by < ay + aside and ax < bx + bside and bx < ax + aside


def test_halves_cut_the_longer_side():
    assert halves(100, 300) == ((0, 0, 100, 150), (0, 150, 100, 150))
    assert halves(301, 100) == ((0, 0, 150, 100), (150, 0, 151, 100))
    assert split_region((0, 150, 100, 150)) == ((0, 150, 100, 75), (0, 225, 100, 75))  # a half cut again: offsets kept
    assert split_region((50, 150, 100, 40)) == ((50, 150, 50, 40), (100, 150, 50, 40))


def test_crops_stay_inside_their_region_at_every_scale_and_come_mirrored():
    region = (0, 150, 100, 150)
    crops = crops_in("p", region)
    assert {c.mirrored for c in crops} == {False, True} and len(crops) % 2 == 0
    sides = sorted({c.box[2] for c in crops})
    assert sides == sorted({round(s * 100) for s in photos.SCALES})
    for crop in crops:
        top, left, side = crop.box
        assert top >= 0 and top + side <= 100 and left >= 150 and left + side <= 300
    assert len({(c.box, c.mirrored) for c in crops}) == len(crops)


def test_calibration_validation_and_evaluation_crops_never_share_a_pixel():
    """Validation has pixels of its own: a setting chosen on it is not chosen on what calibration fitted its ranges to."""
    sizes = {"a": (427, 640), "b": (512, 512), "c": (300, 451), "d": (640, 300)}
    plan = crop_plan(sizes)
    splits = {"calibration": plan.calibration, "validation": plan.validation, "evaluation": plan.evaluation}
    for name in sizes:
        own = {split: [c for c in crops if c.photo == name] for split, crops in splits.items()}
        assert all(own.values()), name
        for first, second in (("calibration", "validation"), ("calibration", "evaluation"), ("validation", "evaluation")):
            assert not any(_overlap(a, b) for a in own[first] for b in own[second]), (name, first, second)


def test_quarter_crops_are_cut_at_their_half_s_pixel_sizes_the_largest_capped():
    """Calibration and validation crops are no smaller than evaluation's: the resize would blur them more."""
    plan = crop_plan({"a": (100, 200)})  # halves 100×100, quarters 100×50
    assert sorted({c.box[2] for c in plan.evaluation}) == [40, 50, 64, 80, 100]
    assert sorted({c.box[2] for c in plan.calibration}) == sorted({c.box[2] for c in plan.validation}) == [40, 50]
    assert sorted({c.box[2] for c in crops_in("p", (0, 0, 100, 50))}) == [20, 25, 32, 40, 50]  # of its own shorter side


def test_the_evaluation_half_and_the_calibration_quarter_alternate_from_photo_to_photo():
    plan = crop_plan({name: (100, 200) for name in "abcd"})
    evaluation_left = {c.photo: c.box[1] < 100 for c in plan.evaluation}
    assert evaluation_left == {"a": False, "b": True, "c": False, "d": True}
    calibration_first = {c.photo: c.box[1] % 100 < 50 for c in plan.calibration}  # of its half, cut again across columns
    assert calibration_first == {"a": True, "b": True, "c": False, "d": False}


def test_evaluation_only_photos_give_whole_photo_evaluation_crops_and_no_calibration_or_validation_crop():
    plan = crop_plan({"a": (100, 200)}, {"z": (120, 160)})
    assert {c.photo for c in plan.calibration} == {c.photo for c in plan.validation} == {"a"}
    extra = [c for c in plan.evaluation if c.photo == "z"]
    assert extra == crops_in("z", (0, 0, 120, 160))
    plain = crop_plan({"a": (100, 200)})
    assert (plain.calibration, plain.validation) == (plan.calibration, plan.validation)
    assert plain.evaluation == [c for c in plan.evaluation if c.photo == "a"]


def test_render_resizes_and_mirrors():
    image = np.arange(40 * 40 * 3, dtype=np.uint8).reshape(40, 40, 3)
    plain, mirrored = render([Crop("x", (0, 0, 40), False), Crop("x", (0, 0, 40), True)], {"x": image}, (40, 40))
    assert plain.shape == (40, 40, 3)
    np.testing.assert_array_equal(mirrored, plain[:, ::-1])


def test_the_bundled_photos_are_found_without_a_network():
    found = photos.available_photos()
    assert {"flower.jpg", "china.jpg"} <= set(found)  # scikit-learn is a core dependency
    assert all(path.is_file() for path in found.values())


def test_crop_sets_are_deterministic_disjoint_and_sized():
    first = load_crops((32, 32), calibration_size=20, eval_size=30, seed=0)
    again = load_crops((32, 32), calibration_size=20, eval_size=30, seed=0)
    other = load_crops((32, 32), calibration_size=20, eval_size=30, seed=1)
    assert first.calibration.shape == (20, 32, 32, 3) and first.evaluation.shape == (30, 32, 32, 3)
    assert first.calibration.dtype == np.uint8
    np.testing.assert_array_equal(first.evaluation, again.evaluation)
    assert first.fingerprint == again.fingerprint != other.fingerprint
    cal_rows = {row.tobytes() for row in first.calibration}
    assert not any(row.tobytes() in cal_rows for row in first.evaluation)
    assert "flower.jpg" in first.probes and first.probes["flower.jpg"].shape == (32, 32, 3)


def test_spare_crops_are_the_validation_quarters_and_touch_no_calibration_or_evaluation_pixel(monkeypatch):
    """The validation split of the photos: crops of each photo's validation quarter, the same ones for the same seed,
    whatever the calibration set's size."""
    crops = load_crops((32, 32), calibration_size=20, eval_size=30, seed=0)
    assert crops.spare.shape == (photos.SPARE_CROPS, 32, 32, 3) and len(crops.spare_photos) == photos.SPARE_CROPS
    np.testing.assert_array_equal(crops.spare, load_crops((32, 32), calibration_size=None, eval_size=30, seed=0).spare)
    assert load_crops((32, 32), calibration_size=0, eval_size=30, seed=0).calibration.shape == (0, 32, 32, 3)
    planned = []
    monkeypatch.setattr(photos, "render", lambda plan, images, size: planned.append(list(plan)) or np.zeros((len(plan), *size, 3)))
    load_crops((32, 32), calibration_size=20, eval_size=30, seed=0)
    calibration, evaluation, spare = planned[:3]  # then the probes' center crops
    assert len(spare) == photos.SPARE_CROPS and len({c.photo for c in spare}) == len(photos.available_photos())
    for other in (calibration, evaluation):
        assert not any(_overlap(a, b) for a in spare for b in other if a.photo == b.photo)


def _write_photos(folder, names):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(folder / name)


def test_evaluation_only_photos_widen_evaluation_and_leave_calibration_and_validation_as_they_were(tmp_path):
    _write_photos(tmp_path, ["x1.png", "x2.png"])
    plain = load_crops((32, 32), calibration_size=20, eval_size=None, seed=0)
    wide = load_crops((32, 32), calibration_size=20, eval_size=None, seed=0,
                      evaluation_only={"x1.png": tmp_path / "x1.png", "x2.png": tmp_path / "x2.png"})
    np.testing.assert_array_equal(wide.calibration, plain.calibration)
    np.testing.assert_array_equal(wide.spare, plain.spare)
    added = 2 * len(crops_in("x", (0, 0, 60, 80)))
    assert len(wide.evaluation) == len(plain.evaluation) + added
    plain_rows = {row.tobytes() for row in plain.evaluation}
    assert sum(row.tobytes() in plain_rows for row in wide.evaluation) == len(plain.evaluation)
    assert wide.evaluation_only == ("x1.png", "x2.png") and plain.evaluation_only == ()
    assert len(wide.evaluation_photos) == len(wide.evaluation) and wide.evaluation_photos.count("x1.png") == added // 2
    assert wide.fingerprint != plain.fingerprint
    with pytest.raises(photos.DataError, match="share a name with the bundled ones: flower.jpg"):
        load_crops((32, 32), calibration_size=20, eval_size=None, seed=0, evaluation_only={"flower.jpg": tmp_path / "x1.png"})


def test_evaluation_crops_spilled_to_disk_are_the_same_crops_mapped_and_leave_no_file(tmp_path):
    in_memory = load_crops((32, 32), calibration_size=20, eval_size=None, seed=0)
    spilled = load_crops((32, 32), calibration_size=20, eval_size=None, seed=0, spill=tmp_path / "spill")
    assert isinstance(spilled.evaluation, np.memmap) and not spilled.evaluation.flags.writeable
    np.testing.assert_array_equal(spilled.evaluation, in_memory.evaluation)
    assert spilled.fingerprint == in_memory.fingerprint  # the same crops, hashed a block at a time
    assert list((tmp_path / "spill").iterdir()) == []  # unlinked at once: the mapping holds the data until it goes


def test_opencv_doc_photos_missing_is_a_clear_error_naming_the_key_and_the_install(tmp_path):
    _write_photos(tmp_path, photos.OPENCV_PHOTOS[:-1])
    with pytest.raises(photos.DataError, match=r"data.extra_eval_photos: .*plant.jpg not found \(1 of 20 .*apt-get install opencv-doc"):
        photos.opencv_doc_photos(tmp_path)
    _write_photos(tmp_path, photos.OPENCV_PHOTOS[-1:])
    found = photos.opencv_doc_photos(tmp_path)
    assert len(found) == len(photos.OPENCV_PHOTOS) and found["plant.jpg"] == tmp_path / photos.OPENCV_PHOTOS[-1]


def test_the_opencv_doc_photos_are_installed_and_are_photos():
    """``make data`` installs Debian's opencv-doc; its photos are real, readable colour or grey images of some size."""
    from edgeship.images import read_image

    found = photos.opencv_doc_photos()
    assert not set(found) & set(photos.available_photos())
    for path in found.values():
        image = read_image(path)
        assert image.ndim == 3 and min(image.shape[:2]) >= 300 and image.std() > 20, path


def test_no_photos_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(photos, "package_folder", lambda package: None)
    with pytest.raises(photos.DataError, match="no sample photos found.*edgeship\\[efficientnet\\]"):
        photos.available_photos()


def test_probes_are_judged_on_the_top_class():
    classes = ("daisy", "mushroom", "espresso", "cup", "x", "y")
    logits = {"flower.jpg": np.array([3.0, 1, 0, 0, 0, 0]), "coffee.png": np.array([0.0, 5, 1, 0, 0, 0])}
    results = {r["photo"]: r for r in judge_probes(logits, classes)}
    assert results["flower.jpg"]["ok"] and results["flower.jpg"]["predicted"] == "daisy"
    assert not results["coffee.png"]["ok"] and results["coffee.png"]["predicted"] == "mushroom"
    assert [name for name, _ in results["coffee.png"]["top5"]][:2] == ["mushroom", "espresso"]
    assert sum(p for _, p in results["flower.jpg"]["top5"]) <= 1.0

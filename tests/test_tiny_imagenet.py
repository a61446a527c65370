"""Tiny-ImageNet in the download stage (local folder, zip download, limits, one-line errors) and
CIFAR-100 from a folder in the official layout."""

import hashlib
import shutil
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bmtard.config.dataset_table import NAMES
from bmtard.config.schema import DataConfig
from bmtard.core.errors import DataError
from bmtard.core.io import sha256_file
from bmtard.data import datasets
from bmtard.data import tiny_imagenet_files as tif
from bmtard.data.datasets import prepare
from bmtard.data.splits import load_split

from dataset_fixtures import http_server, tiny_wnids, write_cifar100, write_tiny_imagenet

WNIDS = tiny_wnids()  # the order of the fixture's wnids.txt
SORTED = sorted(WNIDS)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """The fixture's tiny-imagenet-200 folder (2 train, 1 val image per class); do not change it."""
    return write_tiny_imagenet(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def tiny_copy(tiny, tmp_path) -> Path:
    """A copy of ``tiny`` to damage."""
    return Path(shutil.copytree(tiny, tmp_path / "copy" / tif.FOLDER))


def local(root: Path, **kw) -> DataConfig:
    return DataConfig(dataset="tiny_imagenet", local_root=str(root), verify_md5=False, **kw)


def decoded(folder: Path, rel: str) -> np.ndarray:
    """What Pillow itself makes of a file: uint8 (64, 64, 3)."""
    with Image.open(folder / rel) as im:
        return np.asarray(im.convert("RGB"))


def expected_train(per_class: int = 2) -> tuple[list[str], list[int]]:
    paths = [f"train/{w}/images/{w}_{i}.JPEG" for w in SORTED for i in range(per_class)]
    return paths, [c for c in range(200) for _ in range(per_class)]


def expected_val() -> tuple[list[str], list[int]]:
    """val_0 .. val_199 in natural order (val_2 before val_10); val_k is of WNIDS[k]."""
    return [f"val/images/val_{k}.JPEG" for k in range(200)], [SORTED.index(w) for w in WNIDS]


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_every_dataset_of_the_table_has_a_reader():
    assert set(datasets.READERS) == set(NAMES)


def test_local_folder_whole(tiny, tmp_path):
    manifest = prepare(local(tiny), tmp_path)
    assert manifest["dataset"] == "tiny_imagenet" and manifest["source"] == "local"
    assert manifest["num_classes"] == 200 and manifest["image_size"] == 64
    assert manifest["root"] == str(tiny.resolve())
    assert manifest["classes"] == [f"name{w[1:]}, other name" for w in SORTED]
    for name, (paths, labels) in (("train", expected_train()), ("test", expected_val())):
        entry = manifest["splits"][name]
        split = load_split(tmp_path / f"{name}.npz", entry["sha256"])
        assert split.images.shape == (len(paths), 64, 64, 3) and split.images.dtype == np.uint8
        assert split.labels.tolist() == labels
        assert entry["count"] == len(paths) and entry["indices"] == "all"
        assert entry["per_class"] == np.bincount(labels, minlength=200).tolist()
        for i, rel in enumerate(paths):
            assert np.array_equal(split.images[i], decoded(tiny, rel)), rel
        # what was read: the text files one by one, the images as one combined SHA-256
        images = datasets.TINY_IMAGENET_IMAGES[name]
        lines = sorted(f"{p}\t{sha256_file(tiny / p)}\n" for p in paths)
        assert entry["read"][images] == hashlib.sha256("".join(lines).encode()).hexdigest()
        assert entry["read"]["wnids.txt"] == sha256_file(tiny / "wnids.txt")
    assert set(manifest["splits"]["test"]["read"]) == {
        "wnids.txt",
        "words.txt",
        "val/val_annotations.txt",
        "val/images/*.JPEG",
    }


def test_grayscale_images_become_three_equal_channels(tiny, tmp_path):
    prepare(local(tiny), tmp_path)
    train, test = load_split(tmp_path / "train.npz"), load_split(tmp_path / "test.npz")
    with Image.open(tiny / "val" / "images" / "val_0.JPEG") as im:
        assert im.mode == "L"
    first = 2 * SORTED.index(WNIDS[0])  # the first image of wnids.txt's first wnid
    for image in (train.images[first], test.images[0]):
        assert np.array_equal(image[..., 0], image[..., 1])
        assert np.array_equal(image[..., 0], image[..., 2])
    assert not np.array_equal(train.images[first + 1][..., 0], train.images[first + 1][..., 1])


def test_reader_output_is_c_contiguous_hwc(tiny):
    paths, _ = expected_train()
    images, shas = tif.read_images(tiny, paths[:3], 64)
    assert images.flags.c_contiguous and images.shape == (3, 64, 64, 3)
    assert shas == [sha256_file(tiny / p) for p in paths[:3]]


def test_root_may_be_the_folder_or_its_parent(tiny, tmp_path):
    a = prepare(local(tiny, train_limit=200, test_limit=200), tmp_path / "a")
    b = prepare(local(tiny.parent, train_limit=200, test_limit=200), tmp_path / "b")
    assert a["splits"] == b["splits"] and a["root"] == b["root"]


def test_limits_are_balanced_and_only_kept_images_are_decoded(tiny_copy, tmp_path):
    # the last image of every class is not kept with train_limit = 250: damage one of them
    paths, _ = expected_train()
    (tiny_copy / paths[-1]).write_bytes(b"not a JPEG")
    manifest = prepare(local(tiny_copy, train_limit=250, test_limit=120), tmp_path)
    train, test = load_split(tmp_path / "train.npz"), load_split(tmp_path / "test.npz")
    assert manifest["splits"]["train"]["per_class"] == [2] * 50 + [1] * 150
    assert manifest["splits"]["test"]["per_class"] == [1] * 120 + [0] * 80
    assert manifest["splits"]["train"]["indices"] == "first per class, original order"
    kept = [p for p in paths if p.endswith("_0.JPEG") or SORTED.index(p.split("/")[1]) < 50]
    assert len(train) == 250 and train.labels.tolist() == sorted(train.labels.tolist())
    for i, rel in enumerate(kept):
        assert np.array_equal(train.images[i], decoded(tiny_copy, rel)), rel
    val_paths, val_labels = expected_val()
    keep = [k for k in range(200) if val_labels[k] < 120]
    assert test.labels.tolist() == [val_labels[k] for k in keep]
    assert np.array_equal(test.images[0], decoded(tiny_copy, val_paths[keep[0]]))
    with pytest.raises(DataError, match="not a readable JPEG image"):
        prepare(local(tiny_copy), tmp_path / "all")


def test_limit_larger_than_split_is_named(tiny, tmp_path):
    with pytest.raises(DataError, match="data.test_limit = 201: only 200 test images"):
        prepare(local(tiny, test_limit=201), tmp_path)
    with pytest.raises(DataError, match="data.train_limit = 401: only 400 train images"):
        prepare(local(tiny, train_limit=401), tmp_path)
    assert not list(tmp_path.iterdir())


def test_verify_md5_checks_completeness(tiny, tmp_path, monkeypatch):
    cfg = replace(local(tiny), verify_md5=True)
    with pytest.raises(DataError) as e:
        prepare(cfg, tmp_path / "a")
    msg = one_line(e)
    assert msg == (
        f"{tiny / 'train' / SORTED[0] / 'images'}: 2 image(s) of class {SORTED[0]}, the official "
        f"set has 500 (data.verify_md5 checks that the folder is complete); for a subset set "
        f"data.verify_md5: false"
    )
    monkeypatch.setattr(tif, "TRAIN_PER_CLASS", 2)
    with pytest.raises(
        DataError, match=r"val_annotations.txt: 1 image\(s\) of class .*, the official set has 50 "
    ):
        prepare(cfg, tmp_path / "b")
    monkeypatch.setattr(tif, "VAL_PER_CLASS", 1)
    assert prepare(cfg, tmp_path / "c")["verify_md5"] is True


def test_missing_local_root_is_named(tmp_path):
    with pytest.raises(DataError, match=r"data\.local_root = '.*nowhere': no 'tiny-imagenet-200'"):
        prepare(local(tmp_path / "nowhere"), tmp_path)


def rewrite(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def save_jpeg(path: Path, size: tuple[int, int], keep: float = 1.0) -> None:
    """A noise JPEG of ``size`` (w, h), cut to the first ``keep`` of its bytes."""
    noise = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, "JPEG")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def damage(folder: Path, what: str) -> tuple[Path, str]:
    """Damage ``folder`` as ``what`` says; return the path the message must start with and a
    part of the message."""
    ann = folder / "val" / "val_annotations.txt"
    first = folder / "train" / SORTED[0] / "images" / f"{SORTED[0]}_0.JPEG"
    if what in ("wnids.txt", "words.txt", "val/val_annotations.txt"):
        (folder / what).unlink()
        return folder / what, "not found (a tiny-imagenet-200 folder holds wnids.txt, words.txt, "
    if what == "train folder":
        shutil.rmtree(folder / "train" / SORTED[3] / "images")
        return folder / "train" / SORTED[3] / "images", "not found (train/<wnid>/images/*.JPEG"
    if what == "val image":
        (folder / "val" / "images" / "val_7.JPEG").unlink()
        return folder / "val" / "images" / "val_7.JPEG", "not found (val/images/ holds every"
    if what == "unknown wnid":
        rewrite(ann, f"val_5.JPEG\t{WNIDS[5]}", "val_5.JPEG\tn99999999")
        return ann, "line 6: wnid 'n99999999' is not in wnids.txt; each line: <file>.JPEG, a wnid"
    if what == "five fields":
        rewrite(ann, "\t1\t2\t60\t61\n", "\t1\t2\t60\n")
        return ann, "line 1 is malformed (5 fields); each line: <file>.JPEG, a wnid of wnids.txt"
    if what == "path in annotations":
        rewrite(ann, "val_3.JPEG", "../val_3.JPEG")
        return ann, "line 4 is malformed ('../val_3.JPEG"
    if what == "box":
        rewrite(ann, "\t1\t2\t60\t61\n", "\t1\tx\t60\t61\n")
        return ann, "line 1 is malformed ("
    if what == "listed twice":
        rewrite(ann, "val_9.JPEG", "val_8.JPEG")
        return ann, "line 10: val_8.JPEG is listed twice"
    if what == "wnid line":
        rewrite(folder / "wnids.txt", WNIDS[2], f"{WNIDS[2]} x")
        return folder / "wnids.txt", "line 3 is malformed ("
    if what == "199 wnids":
        rewrite(folder / "wnids.txt", f"{WNIDS[9]}\n", "")
        return folder / "wnids.txt", "199 wnids, not 200"
    if what == "wnid twice":
        rewrite(folder / "wnids.txt", WNIDS[9], WNIDS[8])
        return folder / "wnids.txt", f"line 10: wnid {WNIDS[8]} is listed twice"
    if what == "words line":
        rewrite(folder / "words.txt", f"{WNIDS[0]}\t", f"{WNIDS[0]} ")
        return folder / "words.txt", "is malformed ("
    if what == "words missing":
        rewrite(folder / "words.txt", f"{WNIDS[0]}\t", "n98989898\t")
        return folder / "words.txt", f"no line for wnid {WNIDS[0]} (1 wnids"
    if what == "stray train folder":
        (folder / "train" / "n12345678").mkdir()
        return folder / "train" / "n12345678", "not a wnid of wnids.txt"
    if what == "32 x 32":
        save_jpeg(first, (32, 32))
        return first, "32 x 32 pixels, not 64 x 64"
    if what == "size before pixels":  # half a 128 x 64 JPEG: refused for its size, not its damage
        save_jpeg(first, (128, 64), keep=0.5)
        return first, "128 x 64 pixels, not 64 x 64"
    if what == "png":
        Image.new("RGB", (64, 64)).save(first, "PNG")
        return first, "not a readable JPEG image (not a JPEG file)"
    if what == "garbage":
        first.write_bytes(b"\xff\xd8\xff garbage")
        return first, "not a readable JPEG image ("
    if what == "truncated":
        save_jpeg(first, (64, 64), keep=0.5)
        return first, "not a readable JPEG image (OSError"
    raise AssertionError(what)


@pytest.mark.parametrize(
    "what",
    [
        "wnids.txt",
        "words.txt",
        "val/val_annotations.txt",
        "train folder",
        "val image",
        "unknown wnid",
        "five fields",
        "path in annotations",
        "box",
        "listed twice",
        "wnid line",
        "199 wnids",
        "wnid twice",
        "words line",
        "words missing",
        "stray train folder",
        "32 x 32",
        "size before pixels",
        "png",
        "garbage",
        "truncated",
    ],
)
def test_damage_is_one_line_naming_the_file(tiny_copy, tmp_path, what):
    path, part = damage(tiny_copy, what)
    with pytest.raises(DataError) as e:
        prepare(local(tiny_copy.parent), tmp_path / "out")
    msg = one_line(e)
    assert msg.startswith(f"{path}: ") and part in msg
    assert not (tmp_path / "out").exists()


def test_missing_image_in_read_images(tiny):
    with pytest.raises(DataError) as e:
        tif.read_images(tiny, ["train/x/images/gone.JPEG"], 64)
    assert one_line(e).startswith(f"{tiny / 'train/x/images/gone.JPEG'}: not found (")


def test_natural_order():
    names = ["val_10.JPEG", "val_2.JPEG", "val_1.JPEG", "val_01.JPEG", "a.JPEG"]
    assert sorted(names, key=tif.natural_key) == [
        "a.JPEG",
        "val_01.JPEG",
        "val_1.JPEG",
        "val_2.JPEG",
        "val_10.JPEG",
    ]


# --- the official zip, downloaded


def use_zip(monkeypatch, url: str, archive: Path) -> None:
    """Make the official zip's table (URL and MD5) describe ``archive`` served at ``url``."""
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    zip_ = datasets.Archive(f"{url}/{archive.name}", archive.name, md5)
    monkeypatch.setattr(datasets, "TINY_IMAGENET_ZIP", zip_)


def pack(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(folder.rglob("*")):
            z.write(path, path.relative_to(folder.parent).as_posix())
    return archive


def test_offline_download_says_how_to_point_at_local_data(tmp_path, monkeypatch):
    zip_ = replace(datasets.TINY_IMAGENET_ZIP, url="http://localhost:9/tiny-imagenet-200.zip")
    monkeypatch.setattr(datasets, "TINY_IMAGENET_ZIP", zip_)
    cfg = DataConfig(dataset="tiny_imagenet", download_root=str(tmp_path / "raw"))
    with pytest.raises(DataError) as e:
        prepare(cfg, tmp_path / "out")
    msg = one_line(e)
    assert msg.startswith(f"cannot download tiny_imagenet into {tmp_path / 'raw'} (")
    assert msg.endswith(
        "Without internet, set data.local_root in params.yaml to a folder holding "
        "tiny-imagenet-200 (unpacked from tiny-imagenet-200.zip; with data.verify_md5: false "
        "for a subset)"
    )
    assert not (tmp_path / "out").exists()


def test_unverified_download_is_refused(tmp_path):
    with pytest.raises(DataError, match="verify_md5 = false needs data.local_root"):
        prepare(DataConfig(dataset="tiny_imagenet", verify_md5=False), tmp_path)


def test_official_zip_url_and_md5():
    z = datasets.TINY_IMAGENET_ZIP
    assert z.url == "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
    assert z.filename == "tiny-imagenet-200.zip" and z.md5 == "90528d7ca1a48142e341f4ef8d21d0de"


def test_download_checks_the_zip_and_reads_it_as_a_local_folder(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(tif, "TRAIN_PER_CLASS", 2)  # the fixture counts as complete
    monkeypatch.setattr(tif, "VAL_PER_CLASS", 1)
    www = tmp_path / "www"
    www.mkdir()
    archive = pack(tiny, www / "tiny-imagenet-200.zip")
    raw = tmp_path / "raw"
    cfg = DataConfig(dataset="tiny_imagenet", download_root=str(raw), test_limit=100)
    want = prepare(local(tiny, test_limit=100), tmp_path / "local")
    with http_server(www) as url:
        use_zip(monkeypatch, url, archive)
        got = prepare(cfg, tmp_path / "out")
    assert got["source"] == "download" and got["verify_md5"] is True
    assert got["root"] == str((raw / tif.FOLDER).resolve())
    assert got["splits"] == want["splits"] and got["classes"] == want["classes"]
    # offline again: the zip in download_root has its MD5, so nothing is fetched
    assert prepare(cfg, tmp_path / "again")["splits"] == want["splits"]
    # a zip that does not match its MD5 is refused
    (raw / archive.name).unlink()
    archive.write_bytes(archive.read_bytes()[:-10])
    with http_server(www) as url, pytest.raises(DataError) as e:
        zip_ = replace(datasets.TINY_IMAGENET_ZIP, url=f"{url}/{archive.name}")
        monkeypatch.setattr(datasets, "TINY_IMAGENET_ZIP", zip_)
        prepare(cfg, tmp_path / "o3")
    assert one_line(e).startswith(f"tiny_imagenet in {raw} fails the official MD5 check (")


def test_downloaded_files_go_through_the_same_reader(tiny_copy, tmp_path, monkeypatch):
    monkeypatch.setattr(tif, "TRAIN_PER_CLASS", 2)
    monkeypatch.setattr(tif, "VAL_PER_CLASS", 1)
    save_jpeg(tiny_copy / "val" / "images" / "val_3.JPEG", (32, 32))
    www = tmp_path / "www"
    www.mkdir()
    archive = pack(tiny_copy, www / "tiny-imagenet-200.zip")
    raw = tmp_path / "raw"
    with http_server(www) as url, pytest.raises(DataError) as e:
        use_zip(monkeypatch, url, archive)
        prepare(DataConfig(dataset="tiny_imagenet", download_root=str(raw)), tmp_path / "out")
    bad = raw / tif.FOLDER / "val" / "images" / "val_3.JPEG"
    assert one_line(e) == (
        f"{bad}: 32 x 32 pixels, not 64 x 64 (every Tiny-ImageNet image is 64 x 64); "
        f"replace it with the original file"
    )


def test_a_file_beside_the_unpacked_zip_breaks_completeness(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(tif, "TRAIN_PER_CLASS", 2)
    monkeypatch.setattr(tif, "VAL_PER_CLASS", 1)
    www = tmp_path / "www"
    www.mkdir()
    archive = pack(tiny, www / "tiny-imagenet-200.zip")
    raw = tmp_path / "raw"
    extra = raw / tif.FOLDER / "train" / SORTED[0] / "images" / "extra.JPEG"
    extra.parent.mkdir(parents=True)
    save_jpeg(extra, (64, 64))
    with http_server(www) as url, pytest.raises(DataError) as e:
        use_zip(monkeypatch, url, archive)
        prepare(DataConfig(dataset="tiny_imagenet", download_root=str(raw)), tmp_path / "out")
    assert one_line(e).endswith(f"; delete {raw / tif.FOLDER} and retry")


# --- CIFAR-100 in the official layout


def test_cifar100_official_layout(tmp_path):
    folder, data, labels = write_cifar100(tmp_path / "src", per_class_train=3, per_class_test=2)
    cfg = DataConfig(
        dataset="cifar100", local_root=str(folder.parent), verify_md5=False, train_limit=250
    )
    manifest = prepare(cfg, tmp_path / "out")
    assert manifest["num_classes"] == 100 and manifest["image_size"] == 32
    assert manifest["classes"] == [f"fine{i:02d}" for i in range(100)]
    assert manifest["splits"]["train"]["per_class"] == [3] * 50 + [2] * 50
    assert manifest["splits"]["test"]["per_class"] == [2] * 100
    assert set(manifest["splits"]["test"]["read"]) == {"test", "meta"}
    for name in ("train", "test"):
        split = load_split(tmp_path / "out" / f"{name}.npz", manifest["splits"][name]["sha256"])
        fine = np.array(labels[name])
        keep = datasets.balanced_indices(fine, 250 if name == "train" else None, 100, "k")
        hwc = data[name].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        assert np.array_equal(split.images, hwc[keep])
        assert split.labels.tolist() == fine[keep].tolist()

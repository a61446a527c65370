"""Small raw datasets in their real on-disk layouts, for the download stage's readers.

``write_tiny_imagenet``: a ``tiny-imagenet-200`` folder as unpacked from the official zip.
``write_cifar100``: a ``cifar-100-python`` folder with the official files' pickled dicts.
``http_server``: a folder served on localhost, for the download code.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import pickle
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

TINY_CLASSES = 200
TINY_SIZE = 64


def tiny_wnids(seed: int = 0) -> list[str]:
    """200 distinct wnids ``n%08d`` in the (unsorted) order of the fixture's wnids.txt."""
    rng = np.random.default_rng(seed)
    return [f"n{n:08d}" for n in rng.choice(10**8, TINY_CLASSES, replace=False)]


def _jpeg(path: Path, rng: np.random.Generator, gray: bool = False) -> None:
    """A random 64 x 64 JPEG: noise on a smooth random background ('L' if ``gray``, else RGB)."""
    channels = 1 if gray else 3
    base = rng.integers(0, 256, (4, 4, channels), dtype=np.uint8).repeat(16, 0).repeat(16, 1)
    noise = rng.integers(-20, 21, base.shape)
    pixels = np.clip(base.astype(int) + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels[..., 0] if gray else pixels, "L" if gray else "RGB")
    image.save(path, "JPEG", quality=90)


def write_tiny_imagenet(
    root: str | Path, train_per_class: int = 2, val_per_class: int = 1, seed: int = 0
) -> Path:
    """Write ``root/tiny-imagenet-200`` in the official zip's layout; return that folder.

    wnids.txt lists ``tiny_wnids(seed)`` (not sorted); words.txt names them ("name<i>, other
    name") among extra wnids; ``train/<wnid>/images/<wnid>_<i>.JPEG`` (i < train_per_class) with
    ``train/<wnid>/<wnid>_boxes.txt``; ``val/images/val_<k>.JPEG`` (val_per_class per class, k
    cycling over the wnids in wnids.txt order) with ``val/val_annotations.txt``; one unlabelled
    ``test/images/test_0.JPEG``. Grayscale ('L') images: the first train image of the first wnid
    of wnids.txt and ``val_0.JPEG``; the rest RGB.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "tiny-imagenet-200"
    folder.mkdir(parents=True)
    wnids = tiny_wnids(seed)
    (folder / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    extra = [f"n{90000000 + i:08d}" for i in range(5)]
    words = [f"{w}\tname{w[1:]}, other name\n" for w in extra[:2] + wnids[::-1] + extra[2:]]
    (folder / "words.txt").write_text("".join(words))
    for c, wnid in enumerate(wnids):
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True)
        boxes = []
        for i in range(train_per_class):
            _jpeg(images / f"{wnid}_{i}.JPEG", rng, gray=c == 0 and i == 0)
            boxes.append(f"{wnid}_{i}.JPEG\t0\t0\t63\t63\n")
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(boxes))
    (folder / "val" / "images").mkdir(parents=True)
    annotations = []
    for k in range(TINY_CLASSES * val_per_class):
        _jpeg(folder / "val" / "images" / f"val_{k}.JPEG", rng, gray=k == 0)
        annotations.append(f"val_{k}.JPEG\t{wnids[k % TINY_CLASSES]}\t1\t2\t60\t61\n")
    (folder / "val" / "val_annotations.txt").write_text("".join(annotations))
    (folder / "test" / "images").mkdir(parents=True)
    _jpeg(folder / "test" / "images" / "test_0.JPEG", rng)
    return folder


def write_cifar100(
    root: str | Path, per_class_train: int = 2, per_class_test: int = 1, seed: int = 0
) -> tuple[Path, dict[str, np.ndarray], dict[str, list[int]]]:
    """Write ``root/cifar-100-python/{train,test,meta}`` as the official files (pickled dicts,
    protocol 2: ``data`` uint8 N x 3072, ``fine_labels``, ``coarse_labels``, ``filenames``,
    ``batch_label``; meta with 100 ``fine_label_names`` and 20 ``coarse_label_names``).

    Labels cycle in a shuffled class order. Returns the folder, the ``data`` written per split
    and the fine labels per split.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True)
    data: dict[str, np.ndarray] = {}
    labels: dict[str, list[int]] = {}
    for name, per_class in (("train", per_class_train), ("test", per_class_test)):
        order = rng.permutation(100)
        fine = [int(order[i % 100]) for i in range(100 * per_class)]
        data[name] = rng.integers(0, 256, (len(fine), 3072), dtype=np.uint8)
        labels[name] = fine
        batch = {
            "filenames": [f"image_{i}.png" for i in range(len(fine))],
            "batch_label": f"{name}ing batch 1 of 1",
            "fine_labels": fine,
            "coarse_labels": [f // 5 for f in fine],
            "data": data[name],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {
        "fine_label_names": [f"fine{i:02d}" for i in range(100)],
        "coarse_label_names": [f"coarse{i:02d}" for i in range(20)],
    }
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder, data, labels


@contextlib.contextmanager
def http_server(folder: str | Path) -> Iterator[str]:
    """Serve ``folder`` over HTTP on localhost while in the block; yields the base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()

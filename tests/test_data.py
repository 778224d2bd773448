"""Tests of the image-dataset loaders and of the crop/flip augmentation."""

from __future__ import annotations

import gzip
import io
import itertools
import re
import sys
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import Case, T, V, bad_input_params, check_raises_before_compiling

from tempering.zoo import datasets as tdata
from tempering.zoo.datasets import (
    DATASETS,
    augment_crop_flip,
    channel_stats,
    load_dataset,
    load_raw,
    normalise,
    split_validation,
)

tfds = pytest.importorskip("tensorflow_datasets")

IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


# ---------------------------------------------------------------- file writers


def write_idx_gz(path: Path, array: np.ndarray) -> None:
    """Writes uint8 ``array`` as a gzip IDX file (the MNIST distribution format)."""
    magic = 0x0800 | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def write_npz_lzma(path: Path, **arrays: np.ndarray) -> None:
    """Writes an npz archive with LZMA-compressed members, like shared/data."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_LZMA) as archive:
        for key, value in arrays.items():
            with archive.open(f"{key}.npy", "w") as member:
                np.lib.format.write_array(member, value, allow_pickle=False)


def make_idx_dataset(root: Path, name: str, n_train: int = 60, n_test: int = 20):
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test),
    }
    (root / name).mkdir(parents=True, exist_ok=True)
    for file, array in arrays.items():
        write_idx_gz(root / name / file, array.astype(np.uint8))
    return {k: v.astype(np.uint8) for k, v in arrays.items()}


def _npz_with_corrupt_member() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("x.npy", b"\x93NUMPY garbage header")
        archive.writestr("y.npy", b"\x93NUMPY garbage header")
    return buffer.getvalue()


def _npz_with_bad_crc(path: Path) -> None:
    """A valid archive with one byte of a member flipped: its CRC-32 fails."""
    np.savez(path, x=np.zeros((6, 32, 32, 3), np.uint8), y=np.zeros(6, np.uint8))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside x.npy's zeros
    path.write_bytes(bytes(data))


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def make_cifar(root: Path, sizes=(7, 6, 5), n_test: int = 8):
    rng = np.random.default_rng(2)
    (root / "cifar10").mkdir(parents=True, exist_ok=True)
    parts = {}
    for i, n in enumerate(sizes):
        x = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
        # distinct channel means, to see that normalisation is per channel
        x[..., 2] //= 4
        parts[f"train_{i}.npz"] = (x, rng.integers(0, 10, n).astype(np.uint8))
    parts["test.npz"] = (
        rng.integers(0, 256, (n_test, 32, 32, 3)).astype(np.uint8),
        rng.integers(0, 10, n_test).astype(np.uint8),
    )
    for file, (x, y) in parts.items():
        write_npz_lzma(root / "cifar10" / file, x=x, y=y)
    return parts


def assert_standardised(inputs: np.ndarray) -> None:
    mean, std = channel_stats(inputs)  # float64 accumulation
    np.testing.assert_allclose(mean, 0.0, atol=1e-5)
    np.testing.assert_allclose(std, 1.0, atol=1e-5)


def assert_well_formed(ds, shape, num_classes) -> None:
    for split in (ds.train, ds.validation, ds.test):
        assert split.inputs.dtype == np.float32
        assert split.labels.dtype == np.int32
        assert split.inputs.shape[1:] == shape
        assert split.labels.shape == (len(split.inputs),)
        assert split.labels.min() >= 0 and split.labels.max() < num_classes
    assert ds.num_classes == num_classes


# ------------------------------------------------------------ tfds (mock data)


@pytest.mark.parametrize(
    "name, shape",
    [
        ("mnist", (28, 28, 1)),
        ("fashion_mnist", (28, 28, 1)),
        ("cifar10", (32, 32, 3)),
    ],
)
def test_tfds_mock_shapes_dtypes_splits(name, shape, tmp_path):
    with tfds.testing.mock_data(num_examples=40):
        ds = load_dataset(name, source="tfds", data_dir=tmp_path)
    assert ds.name == name
    assert_well_formed(ds, shape, 10)
    assert (len(ds.train.labels), len(ds.validation.labels)) == (36, 4)
    assert len(ds.test.labels) == 40
    assert_standardised(ds.train.inputs)
    assert "tensorflow" not in sys.modules


def test_tfds_mock_seeded_split_is_deterministic():
    with tfds.testing.mock_data(num_examples=50):
        a = load_dataset("mnist", source="tfds", seed=3)
        b = load_dataset("mnist", source="tfds", seed=3)
        c = load_dataset("mnist", source="tfds", seed=4)
    for split_a, split_b in zip(a[:3], b[:3], strict=True):
        np.testing.assert_array_equal(split_a.inputs, split_b.inputs)
        np.testing.assert_array_equal(split_a.labels, split_b.labels)
    assert not np.array_equal(a.validation.inputs, c.validation.inputs)


def _emnist_examples(n: int):
    """EMNIST-letters-like examples, stored as tfds stores them: transposed."""
    rng = np.random.default_rng(5)
    labels = np.arange(n) % 26 + 1  # tfds labels 1..26 = a..z
    rows, cols = rng.integers(0, 28, n), rng.integers(0, 28, n)
    images = np.zeros((n, 28, 28, 1), np.uint8)
    images[np.arange(n), rows, cols, 0] = 255  # one bright pixel, stored transposed
    examples = [
        {"image": im, "label": np.int64(lb)}
        for im, lb in zip(images, labels, strict=True)
    ]
    return examples, labels, rows, cols


def test_tfds_emnist_letters_labels_and_orientation():
    examples, labels, rows, cols = _emnist_examples(60)

    def fake_data_source(self, split, **kwargs):
        return examples

    with tfds.testing.mock_data(num_examples=60, as_data_source_fn=fake_data_source):
        ds = load_dataset("emnist/letters", source="tfds", validation_fraction=0.1)
    assert_well_formed(ds, (28, 28, 1), 26)
    assert ds.name == "emnist/letters"
    np.testing.assert_array_equal(ds.test.labels, labels - 1)
    assert set(ds.test.labels.tolist()) == set(range(26))
    # The stored (row, col) pixel ends up at (col, row): images are transposed.
    flat = ds.test.inputs[..., 0].reshape(len(labels), -1).argmax(axis=1)
    np.testing.assert_array_equal(flat // 28, cols)
    np.testing.assert_array_equal(flat % 28, rows)


def test_tfds_emnist_letters_rejects_labels_outside_1_to_26():
    # tfds declares 37 classes for emnist/letters, so its random mock labels
    # include 0 and 27..36, which real EMNIST-letters data never holds.
    with tfds.testing.mock_data(num_examples=40):
        with pytest.raises(ValueError, match=r"1\.\.26"):
            load_dataset("emnist/letters", source="tfds")


def test_tfds_not_prepared_is_file_not_found(tmp_path):
    # it says where raw files would go too (before: tfds' message only)
    with pytest.raises(FileNotFoundError, match=r"array_record.*data_dir/mnist/\{"):
        load_dataset("mnist", source="tfds", data_dir=tmp_path)


# ------------------------------------------------------------------- raw files


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_raw_idx_round_trip_and_normalisation(name, tmp_path):
    arrays = make_idx_dataset(tmp_path, name)
    raw = load_raw(name, tmp_path)
    np.testing.assert_array_equal(
        raw.train_images[..., 0], arrays["train-images-idx3-ubyte.gz"]
    )
    np.testing.assert_array_equal(
        raw.train_labels, arrays["train-labels-idx1-ubyte.gz"]
    )
    np.testing.assert_array_equal(
        raw.test_images[..., 0], arrays["t10k-images-idx3-ubyte.gz"]
    )
    np.testing.assert_array_equal(raw.test_labels, arrays["t10k-labels-idx1-ubyte.gz"])
    assert raw.train_labels.dtype == np.int32

    ds = load_dataset(name, source="raw", data_dir=tmp_path, seed=7)
    assert_well_formed(ds, (28, 28, 1), 10)
    assert (len(ds.train.labels), len(ds.validation.labels), len(ds.test.labels)) == (
        54,
        6,
        20,
    )
    assert_standardised(ds.train.inputs)
    train, validation = split_validation(raw.train_images, raw.train_labels, 0.1, 7)
    mean, std = channel_stats(train.inputs)
    np.testing.assert_allclose(ds.train.inputs * std + mean, train.inputs, atol=1e-3)
    np.testing.assert_allclose(ds.test.inputs * std + mean, raw.test_images, atol=1e-3)
    np.testing.assert_array_equal(ds.validation.labels, validation.labels)


def test_raw_cifar_round_trip_and_per_channel_normalisation(tmp_path):
    parts = make_cifar(tmp_path)
    raw = load_raw("cifar10", tmp_path)
    train_x = np.concatenate([parts[f"train_{i}.npz"][0] for i in range(3)])
    train_y = np.concatenate([parts[f"train_{i}.npz"][1] for i in range(3)])
    np.testing.assert_array_equal(raw.train_images, train_x)  # parts in order
    np.testing.assert_array_equal(raw.train_labels, train_y)
    np.testing.assert_array_equal(raw.test_images, parts["test.npz"][0])

    ds = load_dataset("cifar10", data_dir=tmp_path)  # auto -> raw
    assert_well_formed(ds, (32, 32, 3), 10)
    assert (len(ds.train.labels), len(ds.validation.labels)) == (16, 2)
    assert_standardised(ds.train.inputs)
    train, _ = split_validation(train_x, train_y, 0.1, 0)
    mean, std = channel_stats(train.inputs)
    assert mean[2] < mean[0] / 2  # the channels really differ
    np.testing.assert_allclose(
        ds.test.inputs, normalise(parts["test.npz"][0], mean, std)
    )


def test_auto_source_falls_back_to_tfds_without_raw_files(tmp_path):
    with tfds.testing.mock_data(num_examples=30):
        ds = load_dataset("fashion_mnist", data_dir=tmp_path)
    assert len(ds.test.labels) == 30  # mock tfds data, not raw files


def test_auto_source_with_a_missing_data_dir_names_it():
    """Before, it fell back to tfds, whose error said nothing of the raw files."""
    with pytest.raises(FileNotFoundError, match="data_dir /nonexistent/data is no"):
        load_dataset("mnist", data_dir="/nonexistent/data")


def test_auto_source_given_the_raw_folder_itself_says_give_its_parent(tmp_path):
    make_idx_dataset(tmp_path, "mnist")
    with pytest.raises(FileNotFoundError, match="themselves: give its parent"):
        load_dataset("mnist", data_dir=tmp_path / "mnist")


def test_load_mnist1d_leaves_numpys_global_random_state_alone():
    pytest.importorskip("mnist1d")
    np.random.seed(7)
    expected = np.random.random()
    np.random.seed(7)
    tdata.load_mnist1d(num_samples=100)
    assert np.random.random() == expected


def test_auto_source_with_partial_raw_files_names_the_missing(tmp_path):
    make_idx_dataset(tmp_path, "mnist")
    missing = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_dataset("mnist", data_dir=tmp_path)


def _corrupt_not_gzip(path: Path) -> None:
    path.write_bytes(b"this is not gzip data")


def _corrupt_magic(path: Path) -> None:  # a labels file where images belong
    write_idx_gz(path, np.zeros(60, np.uint8))


def _corrupt_truncated(path: Path) -> None:
    data = gzip.open(path).read()
    with gzip.open(path, "wb") as f:
        f.write(data[:-100])


def _corrupt_shape(path: Path) -> None:
    write_idx_gz(path, np.zeros((60, 32, 32), np.uint8))


def _corrupt_count(path: Path) -> None:
    write_idx_gz(path, np.zeros((59, 28, 28), np.uint8))


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda p: p.unlink(), "not found"),
        (_corrupt_not_gzip, "not a valid gzip"),
        (_corrupt_magic, "0x00000801, expected 0x00000803"),
        (_corrupt_truncated, "header gives shape"),
        (_corrupt_shape, r"shape \(32, 32\), expected \(28, 28\)"),
        (_corrupt_count, "59 images"),
    ],
)
def test_raw_idx_errors_name_the_file(corrupt, match, tmp_path):
    make_idx_dataset(tmp_path, "mnist")
    path = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    corrupt(path)
    error = FileNotFoundError if match == "not found" else ValueError
    with pytest.raises(error, match=match) as info:
        load_dataset("mnist", source="raw", data_dir=tmp_path)
    assert str(path) in str(info.value)


def test_raw_idx_label_out_of_range_names_the_file(tmp_path):
    make_idx_dataset(tmp_path, "fashion_mnist")
    path = tmp_path / "fashion_mnist" / "t10k-labels-idx1-ubyte.gz"
    write_idx_gz(path, np.full(20, 10, np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 10\)") as info:
        load_raw("fashion_mnist", tmp_path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "write, match",
    [
        (lambda p: p.unlink(), "not found"),
        (lambda p: p.write_bytes(b"PK\x03\x04 garbage"), "not a readable npz"),
        (lambda p: p.write_bytes(b"random bytes, not a zip"), "not a readable npz"),
        (lambda p: p.write_bytes(_npz_with_corrupt_member()), "member is corrupt"),
        (_npz_with_bad_crc, "member is corrupt.*CRC"),  # was a bare BadZipFile
        (lambda p: p.write_bytes(_npy_bytes(np.zeros(3))), "single array"),
        (lambda p: write_npz_lzma(p, x=np.zeros((6, 32, 32, 3), np.uint8)), "'y'"),
        (
            lambda p: write_npz_lzma(
                p, x=np.zeros((6, 32, 32), np.uint8), y=np.zeros(6, np.uint8)
            ),
            "'x' has dtype uint8 and shape",
        ),
        (
            lambda p: write_npz_lzma(
                p, x=np.zeros((6, 32, 32, 3), np.uint8), y=np.zeros(5, np.uint8)
            ),
            "'y' has dtype",
        ),
    ],
)
def test_raw_npz_errors_name_the_file(write, match, tmp_path):
    make_cifar(tmp_path)
    path = tmp_path / "cifar10" / "train_1.npz"
    write(path)
    error = FileNotFoundError if match == "not found" else ValueError
    with pytest.raises(error, match=match) as info:
        load_dataset("cifar10", source="raw", data_dir=tmp_path)
    assert str(path) in str(info.value)


def test_emnist_letters_has_no_raw_loader(tmp_path):
    with pytest.raises(ValueError, match="source='tfds'"):
        load_dataset("emnist/letters", source="raw", data_dir=tmp_path)


def test_raw_source_needs_data_dir():
    with pytest.raises(ValueError, match="data_dir"):
        load_dataset("mnist", source="raw")


def test_unknown_name_and_source():
    with pytest.raises(ValueError, match="cifar10, emnist/letters, fashion_mnist"):
        load_dataset("cifar100")
    with pytest.raises(ValueError, match="auto, raw, tfds"):
        load_dataset("mnist", source="web")
    assert set(DATASETS) == {"mnist", "fashion_mnist", "cifar10", "emnist/letters"}


def _shared_data_dir() -> Path | None:
    repo = Path(__file__).resolve().parents[1]
    for candidate in (Path("/work/shared/data"), repo.parent / "shared" / "data"):
        if (candidate / "fashion_mnist").is_dir():
            return candidate
    return None


@pytest.mark.skipif(_shared_data_dir() is None, reason="shared/data not present")
def test_real_fashion_mnist_raw():
    ds = load_dataset("fashion_mnist", data_dir=_shared_data_dir())
    assert_well_formed(ds, (28, 28, 1), 10)
    assert (len(ds.train.labels), len(ds.validation.labels)) == (54000, 6000)
    assert len(ds.test.labels) == 10000
    np.testing.assert_array_equal(np.bincount(ds.test.labels), np.full(10, 1000))
    train_counts = np.bincount(ds.train.labels) + np.bincount(ds.validation.labels)
    np.testing.assert_array_equal(train_counts, np.full(10, 6000))
    assert_standardised(ds.train.inputs)


# ---------------------------------------------------------------- augmentation


def _candidates(image: np.ndarray, padding: int = 4):
    h, w = image.shape[:2]
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    for dy, dx in itertools.product(range(2 * padding + 1), repeat=2):
        crop = padded[dy : dy + h, dx : dx + w]
        yield (dy, dx, False), crop
        yield (dy, dx, True), crop[:, ::-1]


def test_augment_outputs_are_crops_of_the_padded_input():
    images = jax.random.uniform(jax.random.key(0), (64, 8, 8, 3)) + 1.0
    out = np.asarray(jax.jit(augment_crop_flip)(jax.random.key(1), images))
    assert out.shape == images.shape and out.dtype == images.dtype
    used = set()
    for image, result in zip(np.asarray(images), out, strict=True):
        matches = [t for t, c in _candidates(image) if np.array_equal(c, result)]
        assert len(matches) == 1
        used.add(matches[0])
    assert {flip for *_, flip in used} == {False, True}
    assert len(used) > 20  # offsets really vary per example


def test_augment_is_deterministic_per_key_and_vmappable():
    images = jax.random.normal(jax.random.key(2), (16, 32, 32, 3))
    a = augment_crop_flip(jax.random.key(3), images)
    b = augment_crop_flip(jax.random.key(3), images)
    c = augment_crop_flip(jax.random.key(4), images)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    keys = jax.random.split(jax.random.key(3), 2)
    stacked = jax.jit(jax.vmap(augment_crop_flip))(keys, jnp.stack([images, images]))
    assert stacked.shape == (2, *images.shape)
    np.testing.assert_array_equal(stacked[0], augment_crop_flip(keys[0], images))


# --- bad inputs (issue 17): raised before anything compiles ----------------------
# The harness (ctx, compiled, Case) and the table's counts are in conftest.py.

# fmt: off
BAD_INPUTS = [
    # --- data -----------------------------------------------------------------
    Case("data-split-fraction-0", lambda c: tdata.split_validation(c.x, c.y, 0.0, 0), V, r"validation_fraction must be in \(0, 1\)"),
    Case("data-split-fraction-1", lambda c: tdata.split_validation(c.x, c.y, 1.0, 0), V, r"validation_fraction must be in \(0, 1\)"),
    Case("data-split-lengths", lambda c: tdata.split_validation(c.x, c.y[:-4], 0.1, 0), V, r"inputs.*labels", fixed=True),
    Case("data-unknown-dataset", lambda c: tdata.load_dataset("imagenet"), V, r"unknown dataset 'imagenet'"),
    Case("data-unknown-source", lambda c: tdata.load_dataset("mnist", source="web"), V, r"unknown source 'web'"),
    Case("data-raw-without-dir", lambda c: tdata.load_dataset("mnist", source="raw"), V, r"source='raw' needs data_dir"),
    Case("data-fraction-before-loading", lambda c: tdata.load_dataset("mnist", source="raw", data_dir="/nonexistent", validation_fraction=1.5), V, r"validation_fraction must be in \(0, 1\)", fixed=True),
    Case("data-mnist1d-fraction", lambda c: tdata.load_mnist1d(validation_fraction=0.0), V, r"validation_fraction must be in \(0, 1\)"),
    Case("data-augment-not-nhwc", lambda c: tdata.augment_crop_flip(c.key, jnp.zeros((2, 8))), V, r"images must be NHWC", fixed=True),
    Case("data-augment-padding-negative", lambda c: tdata.augment_crop_flip(c.key, jnp.zeros((2, 4, 4, 1)), padding=-1), V, r"padding must be an int >= 0", fixed=True),
    Case("data-fraction-string", lambda c: tdata.load_dataset("mnist", source="raw", data_dir="/nonexistent", validation_fraction="0.1"), T, r"validation_fraction must be a number", fixed=True),
    Case("data-split-seed-none", lambda c: tdata.split_validation(c.x, c.y, 0.1, None), T, r"seed must be an int >= 0 \(the same seed, the same split\), got None", fixed=True),
    Case("data-split-seed-negative", lambda c: tdata.split_validation(c.x, c.y, 0.1, -1), V, r"seed must be an int >= 0, got -1", fixed=True),
    Case("data-split-leaves-no-training", lambda c: tdata.split_validation(c.x[:10], c.y[:10], 0.96, 0), V, r"validation_fraction=0.96 of 10 examples holds out 10, leaving none to train on", fixed=True),
    Case("data-seed-before-loading", lambda c: tdata.load_dataset("mnist", source="raw", data_dir="/nonexistent", seed=1.5), T, r"seed must be an int", fixed=True),
    Case("data-mnist1d-seed-string", lambda c: tdata.load_mnist1d(seed="a"), T, r"seed must be an int", fixed=True),
    Case("data-mnist1d-num-samples", lambda c: tdata.load_mnist1d(num_samples=0), V, r"num_samples must be >= 10", fixed=True),
]
# fmt: on


@pytest.mark.parametrize("case", bad_input_params(BAD_INPUTS))
def test_bad_input_raises_before_anything_compiles(ctx, compiled, case):
    check_raises_before_compiling(ctx, compiled, case)


def test_splitting_an_empty_training_set_says_it_is_empty():
    """It said that validation_fraction=0.1 of 0 examples holds out 1."""
    with pytest.raises(ValueError, match="the training set holds no examples"):
        split_validation(np.zeros((0, 4)), np.zeros(0, int), 0.1, 0)

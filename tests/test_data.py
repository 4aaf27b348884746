"""Data loading, identity split and the P x K sampler (numpy only, except the image dataset)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from hashindex.training.data import EmbeddingSet, PKSampler, identity_split, load_embeddings, save_embeddings
from hashindex.core.errors import IndexFormatError, InputError

LFW = Path(__file__).resolve().parents[1].parent / "shared/data/lfw"


# -- npz loader ----------------------------------------------------------------------------
def test_load_roundtrip_with_string_labels(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4)).astype(np.float32)
    names = np.array(["bob", "al", "bob", "cy", "al", "al"])
    np.savez(tmp_path / "e.npz", embeddings=x, labels=names, ids=np.arange(10, 16))
    d = load_embeddings(tmp_path / "e.npz")
    np.testing.assert_array_equal(d.features, x)
    assert d.labels.dtype == np.int64 and d.ids.dtype == np.int64
    # names are kept and map back to the original strings
    np.testing.assert_array_equal(d.label_names[d.labels], names)
    assert d.num_classes == 3 and d.dim == 4 and len(d) == 6
    save_embeddings(tmp_path / "f.npz", d)
    d2 = load_embeddings(tmp_path / "f.npz")
    np.testing.assert_array_equal(d2.labels, d.labels)
    np.testing.assert_array_equal(d2.label_names[d2.labels], names)


def test_load_int_labels_with_names_and_no_labels(tmp_path):
    x = np.eye(3, dtype=np.float64)
    np.savez(tmp_path / "a.npz", embeddings=x, labels=np.array([2, 0, 2], np.int32), names=np.array(["c", "a", "c"]))
    d = load_embeddings(tmp_path / "a.npz")
    assert d.features.dtype == np.float32
    np.testing.assert_array_equal(d.labels, [2, 0, 2])
    assert d.label_names[2] == "c" and d.label_names[0] == "a"
    np.savez(tmp_path / "b.npz", embeddings=x)
    assert load_embeddings(tmp_path / "b.npz").labels is None


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"features": np.zeros((2, 3), np.float32)}, "no 'embeddings'"),
        ({"embeddings": np.zeros(3, np.float32)}, "2-D"),
        ({"embeddings": np.zeros((2, 3), np.int64)}, "floating"),
        ({"embeddings": np.array([[0, np.nan]], np.float32)}, "NaN"),
        ({"embeddings": np.zeros((2, 3), np.float32), "labels": np.zeros(3, np.int64)}, "labels"),
        ({"embeddings": np.zeros((2, 3), np.float32), "labels": np.array([0.5, 1.0])}, "labels"),
        ({"embeddings": np.zeros((2, 3), np.float32), "labels": np.array([-1, 0])}, "non-negative"),
        ({"embeddings": np.zeros((2, 3), np.float32), "ids": np.array([1, 1])}, "unique"),
        (
            {"embeddings": np.zeros((2, 3), np.float32), "labels": np.array([0, 0]), "names": np.array(["a", "b"])},
            "two names",
        ),
    ],
)
def test_load_rejects_bad_files(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(IndexFormatError, match=match):
        load_embeddings(tmp_path / "bad.npz")


def test_load_rejects_non_npz_pickle_and_missing(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(IndexFormatError, match=r"not an \.npz \(or \.npy\) file of features"):
        load_embeddings(tmp_path / "junk.npz")
    np.savez(tmp_path / "obj.npz", embeddings=np.zeros((2, 2), np.float32), labels=np.array([{}, {}], dtype=object))
    with pytest.raises(IndexFormatError):
        load_embeddings(tmp_path / "obj.npz")
    np.save(tmp_path / "single.npy", np.zeros((2, 2), np.float32))
    with pytest.raises(IndexFormatError, match="single .npy"):
        load_embeddings(tmp_path / "single.npy")
    with pytest.raises(FileNotFoundError):
        load_embeddings(tmp_path / "missing.npz")


def test_embedding_set_subset_keeps_label_values():
    d = EmbeddingSet(np.arange(8, dtype=np.float32).reshape(4, 2), np.array([0, 1, 1, 2]), np.array(["a", "b", "c"]))
    s = d.subset(np.array([1, 3]))
    np.testing.assert_array_equal(s.features, d.features[[1, 3]])
    assert s.label_names[s.labels].tolist() == ["b", "c"]


def test_lfw_dev_npz_loads():
    path = LFW / "lfw_mfn128_dev.npz"
    if not path.exists():
        pytest.skip(f"LFW development split not found at {path}")
    d = load_embeddings(path)
    assert d.features.shape == (9201, 128) and d.labels.shape == (9201,)
    with np.load(path, allow_pickle=False) as z:
        np.testing.assert_array_equal(d.label_names[d.labels], z["names"])
        np.testing.assert_array_equal(d.labels, z["labels"])


def test_data_package_does_not_import_torch():
    code = "import sys, hashindex.training.data; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- identity split ------------------------------------------------------------------------
def test_identity_split_is_disjoint_complete_and_seeded():
    labels = np.random.default_rng(1).integers(0, 50, size=400)
    tr, va = identity_split(labels, val_fraction=0.3, seed=7)
    assert np.intersect1d(labels[tr], labels[va]).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, va])), np.arange(400))
    n_ids = np.unique(labels).size
    assert np.unique(labels[va]).size == round(0.3 * n_ids)
    tr2, va2 = identity_split(labels, val_fraction=0.3, seed=7)
    np.testing.assert_array_equal(va, va2)
    _, va3 = identity_split(labels, val_fraction=0.3, seed=8)
    assert not np.array_equal(va, va3)


def test_identity_split_edges():
    labels = np.array([0, 0, 1, 1])
    tr, va = identity_split(labels, val_fraction=0.01)  # rounds to 0 ids: still one held out
    assert np.unique(labels[va]).size == 1 and np.unique(labels[tr]).size == 1
    tr, va = identity_split(labels, val_fraction=0.0)
    assert va.size == 0 and tr.size == 4
    with pytest.raises(InputError):
        identity_split(labels, val_fraction=1.0)
    with pytest.raises(InputError):
        identity_split(np.zeros(3, int), val_fraction=0.5)


# -- P x K sampler -------------------------------------------------------------------------
def _check_batches(batches, labels, p, k):
    for b in batches:
        assert len(b) == p * k
        ids = labels[b]
        counts = Counter(ids.tolist())
        assert len(counts) == p and set(counts.values()) == {k}, counts
        # grouped: K consecutive rows per identity
        assert all(len(set(ids[i : i + k])) == 1 for i in range(0, p * k, k))


def test_pk_balanced_data_uses_every_row_exactly_once():
    labels = np.repeat(np.arange(12), 8)  # 12 ids x 8 rows, K=4 -> 24 chunks, P=3 -> 8 batches
    s = PKSampler(labels, p=3, k=4, seed=0)
    batches = list(s)
    assert len(batches) == len(s) == 8
    _check_batches(batches, labels, 3, 4)
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(labels.size))


def test_pk_unbalanced_data_covers_every_eligible_row():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(40), rng.integers(1, 15, size=40))
    p, k = 5, 3
    s = PKSampler(labels, p=p, k=k, seed=1)
    for _ in range(3):
        batches = list(s)
        assert len(batches) == len(s)
        _check_batches(batches, labels, p, k)
        seen = set(np.concatenate(batches).tolist())
        counts = np.bincount(labels)
        eligible = {i for i in range(labels.size) if counts[labels[i]] >= 2}
        assert seen == eligible  # singletons skipped (min_samples=2), all else covered
    # no chunk repeats a row when the identity has >= K rows
    for b in batches:
        for i in range(0, p * k, k):
            chunk = b[i : i + k]
            if counts[labels[chunk[0]]] >= k:
                assert len(set(chunk)) == k


def test_pk_small_identities_policy():
    labels = np.array([0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3])
    rep = list(PKSampler(labels, p=2, k=4, seed=0, small="replace"))
    assert 0 in set(labels[np.concatenate(rep)])
    skip = list(PKSampler(labels, p=2, k=4, seed=0, small="skip"))
    assert 0 not in set(labels[np.concatenate(skip)])
    _check_batches(skip, labels, 2, 4)
    _check_batches(rep, labels, 2, 4)


def test_pk_deterministic_epochs_and_errors():
    labels = np.repeat(np.arange(20), 5)
    a, b = PKSampler(labels, 4, 2, seed=5), PKSampler(labels, 4, 2, seed=5)
    e0, e1 = list(a), list(a)
    assert e0 == list(b) and e1 == list(b)
    assert e0 != e1  # epochs differ
    b.set_epoch(1)
    assert list(b) == e1
    assert list(PKSampler(labels, 4, 2, seed=6)) != e0
    with pytest.raises(InputError, match="at least p=30"):
        PKSampler(labels, 30, 2)
    with pytest.raises(InputError):
        PKSampler(labels, 0, 2)
    with pytest.raises(InputError):
        PKSampler(labels, 2, 2, small="drop")


def test_pk_sampler_as_torch_batch_sampler():
    torch = pytest.importorskip("torch")
    labels = np.repeat(np.arange(6), 4)
    ds = torch.utils.data.TensorDataset(torch.arange(24), torch.as_tensor(labels))
    loader = torch.utils.data.DataLoader(ds, batch_sampler=PKSampler(labels, 3, 2, seed=0))
    batches = [(x.numpy(), y.numpy()) for x, y in loader]
    assert len(batches) == len(loader) == 4
    for x, y in batches:
        np.testing.assert_array_equal(labels[x], y)
        _check_batches([x], labels, 3, 2)


# -- image folder --------------------------------------------------------------------------
def test_image_folder_dataset(tmp_path):
    torch = pytest.importorskip("torch")
    from PIL import Image

    from hashindex.training.data.images import Augment, ImageFolderDataset
    from hashindex.core.preprocess import ImagePreprocessing

    rng = np.random.default_rng(0)
    pixels = {}
    for name in ("bob", "al"):
        (tmp_path / name).mkdir()
        for j in range(2):
            arr = rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / name / f"{j}.png")
            pixels[(name, j)] = arr
    (tmp_path / "al" / "notes.txt").write_text("ignored")
    pre = ImagePreprocessing(size=(10, 12), channel_order="BGR", mean=(1.0, 2.0, 3.0), std=(2.0, 4.0, 8.0))
    ds = ImageFolderDataset.from_folder(tmp_path, pre)
    assert ds.class_names == ["al", "bob"] and len(ds) == 4
    np.testing.assert_array_equal(ds.labels, [0, 0, 1, 1])
    x, y = ds[2]
    assert y == 1 and x.shape == (3, 10, 12) and x.dtype == torch.float32
    arr = pixels[("bob", 0)].astype(np.float32)
    # BGR: channel 0 is blue = RGB channel 2
    np.testing.assert_allclose(x[0].numpy(), (arr[:, :, 2] - 1.0) / 2.0)
    np.testing.assert_allclose(x[2].numpy(), (arr[:, :, 0] - 3.0) / 8.0)

    flip = ds.subset(np.array([2]), augment=Augment(crop_scale=(1.0, 1.0), hflip=1.0))
    np.testing.assert_allclose(flip[0][0].numpy(), x.numpy()[:, :, ::-1])
    crop = ds.subset(np.array([2]), augment=Augment(crop_scale=(0.5, 0.6), hflip=0.0))
    torch.manual_seed(0)
    c1 = crop[0][0]
    torch.manual_seed(0)
    assert c1.shape == (3, 10, 12) and torch.equal(c1, crop[0][0])
    assert not torch.equal(c1, x)

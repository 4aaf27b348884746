"""The input rules in hashindex.core.validation, shared by every backend (issue 12, items 5-7, 11)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from hashindex.core.codes import check_codes
from hashindex.core.errors import InputError
from hashindex.core.validation import (
    MAX_ID,
    MAX_K,
    MAX_RESULT_CELLS,
    auto_ids,
    check_features,
    check_id_list,
    check_k,
    check_new_ids,
    check_radius,
    check_result_size,
    check_search_args,
    prepare_features,
)

# -- ragged input (item 11) -------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda: check_features([[1.0, 2.0], [3.0]], 2),
        lambda: prepare_features([[1.0, 2.0], [3.0]], 2, "cosine"),
        lambda: check_new_ids([[1, 2], [3]], 2),
        lambda: check_id_list([[1, 2], [3]]),
        lambda: check_codes([[1, 2], [3]]),
    ],
    ids=["features", "prepare_features", "new ids", "id list", "codes"],
)
def test_ragged_lists_raise_input_error(call):
    with pytest.raises(InputError, match="rectangular"):
        call()


# -- ids (item 5) -------------------------------------------------------------------------------


def test_largest_id_leaves_room_for_the_next_automatic_one():
    assert MAX_ID == 2**63 - 2
    np.testing.assert_array_equal(check_new_ids([MAX_ID], 1), [MAX_ID])
    with pytest.raises(InputError, match="2\\*\\*63 - 2"):
        check_new_ids([2**63 - 1], 1)
    with pytest.raises(InputError, match="2\\*\\*63 - 2"):
        check_new_ids(np.array([2**63 - 1], dtype=np.int64), 1)


@pytest.mark.parametrize("value", [2**63, 2**63 + 5, 2**64 - 1])
def test_unsigned_ids_beyond_int64_are_refused_not_wrapped(value):
    ids = np.array([1, value], dtype=np.uint64)
    with pytest.raises(InputError, match="int64"):
        check_new_ids(ids, 2)
    with pytest.raises(InputError, match="int64"):
        check_id_list(ids)
    with pytest.raises(InputError):  # a plain list becomes uint64 or object: refused either way
        check_new_ids([1, value], 2)


def test_unsigned_ids_within_int64_are_accepted():
    np.testing.assert_array_equal(check_new_ids(np.array([0, 7, 2**62], dtype=np.uint64), 3), [0, 7, 2**62])


def test_automatic_ids_that_would_overflow_are_refused():
    np.testing.assert_array_equal(auto_ids(MAX_ID - 1, 2), [MAX_ID - 1, MAX_ID])
    with pytest.raises(InputError, match="automatic ids"):
        auto_ids(MAX_ID, 2)
    with pytest.raises(InputError, match="automatic ids"):
        auto_ids(2**63, 1)
    assert auto_ids(5, 0).size == 0


# -- k and radius (item 6) ------------------------------------------------------------------


@pytest.mark.parametrize("radius", [0, 16, 17, 2**31 - 2, 2**31 - 1, 2**40, np.int64(2**62)])
def test_radius_beyond_the_code_length_is_clamped_to_it(radius):
    assert check_radius(radius, bits=16) == min(int(radius), 16)
    assert check_search_args(1, radius, None, bits=16)[1] == min(int(radius), 16)
    assert check_radius(radius) == int(radius)  # without bits: unchanged (histogram radii)


@pytest.mark.parametrize("radius", [-1, 1.5, True, "3"])
def test_bad_radius_is_refused(radius):
    with pytest.raises(InputError, match="radius"):
        check_radius(radius, bits=16)


def test_k_beyond_the_cap_is_refused_before_anything_is_allocated():
    assert check_k(MAX_K) == MAX_K
    for k in (MAX_K + 1, 2**40, 2**70):
        with pytest.raises(InputError, match="radius=bits"):
            check_k(k)
        with pytest.raises(InputError, match="radius=bits"):
            check_search_args(k, None, None)
    check_result_size(MAX_RESULT_CELLS // MAX_K, MAX_K)
    with pytest.raises(InputError, match="smaller batches"):
        check_result_size(MAX_RESULT_CELLS // MAX_K + 1, MAX_K)


# -- cosine normalisation (item 7) ----------------------------------------------------------


@pytest.mark.parametrize("magnitude", [1e-38, 1e-30, 1.0, 1e19, 1e20, 3e38])
def test_cosine_normalisation_neither_overflows_nor_underflows(magnitude):
    rng = np.random.default_rng(0)
    raw = rng.standard_normal((6, 32))
    raw /= np.abs(raw).max()  # largest entry = magnitude
    x = (raw * magnitude).astype(np.float32)
    assert np.isfinite(x).all() and (np.abs(x).max(axis=1) > 0).all()
    oracle = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning on the way
        out = prepare_features(x, 32, "cosine")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, oracle, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)


def test_zero_rows_are_still_refused_for_cosine():
    x = np.ones((3, 4), np.float32)
    x[1] = 0
    with pytest.raises(InputError, match="zero vectors"):
        prepare_features(x, 4, "cosine")


def test_float64_values_beyond_float32_are_named():
    x = np.ones((2, 4))
    x[1, 2] = 1e300
    with pytest.raises(InputError, match="float32's range"):
        check_features(x, 4)

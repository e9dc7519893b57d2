"""Rows chosen by index (negative ones counting from the end, or a slice) are resolved by
npkio in the very call that reads, drops or replaces them: another thread changing the
array between two calls of a method can no longer make it act on other rows than those it
named. The change is placed at the worst moment by wrapping the handle's own description
methods (what resolving in Python used to call between the two steps)."""

from __future__ import annotations

import numpy as np
import pytest

from npkio import NumPack


def _swap_in_between(npk, before_result):
    """Makes the next description of an array (``get_shape`` or ``_info``) also save ``x``
    as ``arange(8)``: before it computes its result with ``before_result``, else after."""
    state = {"fired": False}
    real_shape, real_info = npk.get_shape, npk._info

    def wrap(real):
        def call(name):
            if state["fired"]:
                return real(name)
            state["fired"] = True
            if before_result:
                npk.save({"x": np.arange(8)})
                return real(name)
            out = real(name)
            npk.save({"x": np.arange(8)})
            return out

        return call

    npk.get_shape, npk._info = wrap(real_shape), wrap(real_info)
    return state


@pytest.fixture
def npk(tmp_path):
    with NumPack(tmp_path / "r.npk", warn_no_context=False) as n:
        n.save({"x": np.arange(5)})
        yield n


def test_drop_of_the_last_row_drops_the_last_row(npk):
    _swap_in_between(npk, before_result=False)
    npk.drop("x", [-1])
    got = npk.load("x")
    np.testing.assert_array_equal(got, np.arange(len(got)))


def test_getitem_of_the_last_row_reads_the_last_row_of_one_state(npk):
    _swap_in_between(npk, before_result=True)
    got = npk.getitem("x", [-1])
    assert got.tolist() in ([4], [7])


def test_replace_of_the_last_row_keeps_a_change_made_meanwhile(npk):
    fired = _swap_in_between(npk, before_result=False)
    npk.replace({"x": np.array([99])}, [-1])
    got = npk.load("x").tolist()
    if fired["fired"]:
        assert got == list(range(7)) + [99]
    else:
        assert got == [0, 1, 2, 3, 99]


def test_rows_by_slice_and_negative_index_match_numpy(npk):
    npk.save({"a": np.arange(20).reshape(10, 2)})
    a = np.arange(20).reshape(10, 2)
    np.testing.assert_array_equal(npk.getitem("a", [-1, -10, 3]), a[[-1, -10, 3]])
    npk.drop("a", slice(None, None, -3))
    keep = [i for i in range(10) if i not in range(9, -1, -3)]
    np.testing.assert_array_equal(npk.load("a"), a[keep])
    # As in NumPack, a row that is not there is skipped, not refused.
    npk.drop("a", [-7, 100])
    np.testing.assert_array_equal(npk.load("a"), a[keep])
    with pytest.raises(ValueError):
        npk.drop("a", slice(None, None, 0))


def test_rows_of_zero_bytes_append(npk):
    npk.save({"z": np.zeros((3, 0), np.float32)})
    npk.append({"z": np.zeros((2, 0), np.float32)})
    assert npk.load("z").shape == (5, 0)

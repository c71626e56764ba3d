import numpy as np
import pytest

from bench.codec import ImageError, Param, ParameterError, PayloadError, Payloads, check_images


def test_payloads_from_list_indexes_and_sizes():
    items = [b"abc", b"", b"defgh"]
    p = Payloads.from_list(items)
    assert len(p) == 3
    assert list(p) == items
    assert p[-1] == b"defgh"
    assert p.sizes.tolist() == [3, 0, 5]
    assert p.as_array() is None
    with pytest.raises(IndexError):
        p[3]


def test_payloads_from_array_is_zero_copy_and_fixed_rate():
    rows = np.arange(12, dtype=np.uint8).reshape(3, 4)
    p = Payloads.from_array(rows)
    assert p.sizes.tolist() == [4, 4, 4]
    assert p[1] == bytes([4, 5, 6, 7])
    assert np.shares_memory(p.as_array(), rows)


def test_payloads_split_into_parts_and_joined_again_are_the_same_payloads():
    items = [b"abc", b"", b"defgh", b"i"]
    p = Payloads.from_list(items)
    parts = [p.part(0, 2), p.part(2, 3), p.part(3, 4)]
    assert [list(q) for q in parts] == [items[:2], items[2:3], items[3:]]
    assert list(Payloads.concat(parts)) == items
    assert len(Payloads.concat([])) == 0


def test_payloads_coerce_rejects_non_bytes():
    assert Payloads.coerce([b"x", bytearray(b"yz")]).sizes.tolist() == [1, 2]
    with pytest.raises(PayloadError, match="payload 1 is int"):
        Payloads.coerce([b"x", 5])
    with pytest.raises(PayloadError, match="not one bytes"):
        Payloads.coerce(b"abc")


def test_payloads_rejects_inconsistent_offsets():
    with pytest.raises(ValueError):
        Payloads(b"abc", np.array([0, 2]))


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 28, 28), np.float32), "must be uint8"),
    (np.full((1, 4, 4), np.nan), "contains NaN"),
    (np.zeros((28, 28), np.uint8), "rank 2"),
    (np.zeros((0, 28, 28), np.uint8), "empty batch"),
    (np.zeros((1, 2000, 28), np.uint8), "2000x28"),
    ([[1, 2]], "numpy array"),
])
def test_check_images_names_the_problem(bad, message):
    with pytest.raises(ImageError, match=message):
        check_images(bad)


def test_param_parse_names_value_and_range():
    q = Param("quality", int, 75, 1, 100)
    assert q.parse("jpeg", "50") == 50
    with pytest.raises(ParameterError, match=r"quality='150'.*from 1 to 100"):
        q.parse("jpeg", "150")
    with pytest.raises(ParameterError, match="an integer"):
        q.parse("jpeg", "x")
    flag = Param("optimize", bool, False)
    assert flag.parse("jpeg", "1") is True
    with pytest.raises(ParameterError, match="0 or 1"):
        flag.parse("jpeg", "maybe")

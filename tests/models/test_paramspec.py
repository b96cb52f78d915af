"""ParamSpec: exact round trips, strict key/shape/dtype checks, a stable and sensitive digest."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from secagg.models import (
    DtypeMismatchError,
    MissingKeysError,
    ParamSpec,
    ParamSpecError,
    ShapeMismatchError,
    SpecMismatchError,
    TensorSpec,
    UnexpectedKeysError,
    VectorLengthError,
)

# Frozen: the digest of _state() with meta {"adapter": "lora"}. A change means the canonical
# encoding changed, and parties on different versions would no longer agree.
FROZEN_DIGEST = "805f3a44f124dd42561158c8755f56297d481da8b211a5f96ce0ffaf3e7a7ecb"


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "b.weight": torch.randn(3, 4, generator=g),
        "a.bias": torch.randn(5, generator=g),
        "c.scale": torch.randn(2, 2, 2, generator=g).to(torch.bfloat16),
        "d.scalar": torch.tensor(1.5),
    }


def test_round_trip_is_exact_and_sorted() -> None:
    state = _state()
    spec = ParamSpec.from_state_dict(state)
    assert spec.names == ("a.bias", "b.weight", "c.scale", "d.scalar")
    assert spec.size == 5 + 12 + 8 + 1
    assert spec.offsets == (0, 5, 17, 25, 26)
    vec = spec.flatten(state)
    assert vec.dtype == np.float32 and vec.shape == (26,)
    np.testing.assert_array_equal(vec[:5], state["a.bias"].numpy())
    back = spec.unflatten(vec)
    assert set(back) == set(state)
    for name, t in state.items():
        assert back[name].dtype == t.dtype and back[name].shape == t.shape
        assert torch.equal(back[name], t)


def test_flatten_into_out_buffer_and_float64_vectors() -> None:
    state = _state()
    spec = ParamSpec.from_state_dict(state)
    out = np.zeros(spec.size, dtype=np.float32)
    assert spec.flatten(state, out=out) is out
    back = spec.unflatten(out.astype(np.float64))
    assert torch.equal(back["b.weight"], state["b.weight"])
    with pytest.raises(VectorLengthError):
        spec.flatten(state, out=np.zeros(spec.size + 1, dtype=np.float32))
    with pytest.raises(TypeError):
        spec.flatten(state, out=np.zeros(spec.size, dtype=np.float64))


def test_unflatten_copies() -> None:
    state = _state()
    spec = ParamSpec.from_state_dict(state)
    vec = spec.flatten(state)
    back = spec.unflatten(vec)
    vec[:] = 0
    assert torch.equal(back["a.bias"], state["a.bias"])


def test_missing_unexpected_shape_and_dtype_are_rejected() -> None:
    state = _state()
    spec = ParamSpec.from_state_dict(state)
    missing = dict(state)
    del missing["b.weight"]
    with pytest.raises(MissingKeysError) as err:
        spec.flatten(missing)
    assert err.value.keys == ["b.weight"]
    with pytest.raises(UnexpectedKeysError) as err2:
        spec.flatten({**state, "z.extra": torch.zeros(1)})
    assert err2.value.keys == ["z.extra"]
    with pytest.raises(ShapeMismatchError, match=r"b\.weight"):
        spec.flatten({**state, "b.weight": torch.zeros(4, 3)})
    with pytest.raises(DtypeMismatchError, match=r"c\.scale"):
        spec.flatten({**state, "c.scale": torch.zeros(2, 2, 2)})
    # All are ValueErrors too, so generic handlers still catch them.
    assert issubclass(MissingKeysError, ValueError)


@pytest.mark.parametrize(
    ("vector", "error"),
    [
        (np.zeros(25, dtype=np.float32), VectorLengthError),
        (np.zeros(27, dtype=np.float32), VectorLengthError),
        (np.zeros((2, 13), dtype=np.float32), VectorLengthError),
        (np.zeros(26, dtype=np.int32), TypeError),
        ([0.0] * 26, TypeError),
    ],
)
def test_bad_vectors_are_rejected(vector: object, error: type[Exception]) -> None:
    spec = ParamSpec.from_state_dict(_state())
    with pytest.raises(error):
        spec.unflatten(vector)  # type: ignore[arg-type]


def test_non_finite_vectors_are_rejected() -> None:
    spec = ParamSpec.from_state_dict(_state())
    vec = np.zeros(spec.size, dtype=np.float32)
    vec[3] = np.nan
    with pytest.raises(ParamSpecError, match="NaN"):
        spec.unflatten(vec)


def test_digest_is_stable_and_frozen() -> None:
    a = ParamSpec.from_state_dict(_state(), meta={"adapter": "lora"})
    b = ParamSpec.from_state_dict(dict(reversed(list(_state().items()))), meta={"adapter": "lora"})
    assert a.digest == b.digest
    assert a.digest == FROZEN_DIGEST


def test_digest_changes_with_any_field() -> None:
    base = ParamSpec.from_state_dict(_state(), meta={"adapter": "lora"}).digest
    variants = [
        ParamSpec.from_state_dict(_state(), meta={"adapter": "prefix"}),
        ParamSpec.from_state_dict(_state()),
        ParamSpec.from_state_dict(
            {**_state(), "b.weight": torch.zeros(4, 3)}, meta={"adapter": "lora"}
        ),
        ParamSpec.from_state_dict(
            {**_state(), "d.scalar": torch.tensor(1.0, dtype=torch.float64)},
            meta={"adapter": "lora"},
        ),
        ParamSpec.from_state_dict({**_state(), "e.more": torch.zeros(1)}, meta={"adapter": "lora"}),
    ]
    digests = {v.digest for v in variants}
    assert base not in digests and len(digests) == len(variants)


def test_dict_round_trip_and_tamper_detection() -> None:
    spec = ParamSpec.from_state_dict(_state(), meta={"adapter": "lora", "lora.r": "8"})
    again = ParamSpec.from_dict(spec.to_dict())
    assert again == spec and again.digest == spec.digest
    spec.require_same(again)
    tampered = spec.to_dict()
    tampered["meta"]["lora.r"] = "4"
    with pytest.raises(SpecMismatchError):
        ParamSpec.from_dict(tampered)
    with pytest.raises(ParamSpecError):
        ParamSpec.from_dict({"version": "secagg.paramspec.v1", "tensors": "junk"})
    other = ParamSpec.from_dict(
        {
            **tampered,
            "digest": ParamSpec(spec.tensors, (("adapter", "lora"), ("lora.r", "4"))).digest,
        }
    )
    with pytest.raises(SpecMismatchError, match=r"lora\.r"):
        spec.require_same(other)


def test_constructor_validates() -> None:
    t = TensorSpec("a", (2,), "float32")
    with pytest.raises(ParamSpecError):
        ParamSpec((t, t))
    with pytest.raises(ParamSpecError):
        TensorSpec("a", (2,), "int64")
    with pytest.raises(ParamSpecError):
        TensorSpec("a", (-1,), "float32")
    with pytest.raises(ParamSpecError):
        ParamSpec.from_state_dict({})
    with pytest.raises(TypeError):
        ParamSpec.from_state_dict({"a": np.zeros(2)})  # type: ignore[dict-item]


def test_chunk_slices_cover_the_vector() -> None:
    spec = ParamSpec.from_state_dict(_state())
    slices = spec.chunk_slices(10)
    assert [(s.start, s.stop) for s in slices] == [(0, 10), (10, 20), (20, 26)]
    assert spec.chunk_slices(1000) == [slice(0, 26)]
    with pytest.raises(ValueError):
        spec.chunk_slices(0)

"""Mesh from config: sizes, -1, and clear errors."""

import jax
import pytest

from moejax.parallel import MeshSpec, make_mesh


def test_minus_one_takes_the_rest():
    mesh = make_mesh(MeshSpec(data=-1, expert=4))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 1, "expert": 4, "tensor": 1}
    assert mesh.devices.size == jax.device_count() == 8


@pytest.mark.parametrize("spec, match", [
    (MeshSpec(data=3, fsdp=1), "need 3 devices"),
    (MeshSpec(data=-1, fsdp=3), "not divisible by 3"),
    (MeshSpec(data=-1, fsdp=-1), "at most one -1"),
    (MeshSpec(data=0), "mesh.data=0"),
])
def test_mesh_that_does_not_fit_is_an_error(spec, match):
    with pytest.raises(ValueError, match=match):
        make_mesh(spec)

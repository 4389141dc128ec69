"""Mesh from config: sizes, -1, and clear errors."""

import jax
import pytest

from moejax.parallel import EXPERT_PARALLEL_MODES, MeshSpec, make_mesh
from moejax.parallel.expert_parallel import _MODE_BODIES


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


def test_one_list_of_expert_parallel_modes():
    """mesh.expert_parallel's choices are "none" and exactly the shard_map modes with a body."""
    assert set(EXPERT_PARALLEL_MODES) == {"none", *_MODE_BODIES}
    with pytest.raises(ValueError, match="mesh.expert_parallel='ringg'; allowed: none, all_"):
        MeshSpec(expert_parallel="ringg")

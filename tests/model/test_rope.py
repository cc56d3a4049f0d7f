"""RoPE: scores depend only on relative offsets; interpolation at 2x equals the 1x positions scaled."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stiv_jax.model import rope
from numerics import assert_close

HEAD_DIM = 24


def score(q, k, q_angles, k_angles):
    """q.k after rotating q and k (``[head_dim]`` each) by their angles ``[head_dim // 2]``."""
    rq = rope.apply_rotary(q[None, None, None], q_angles[None, None])[0, 0, 0]
    rk = rope.apply_rotary(k[None, None, None], k_angles[None, None])[0, 0, 0]
    return jnp.dot(rq, rk)


@pytest.mark.parametrize("kind, ndim", [("1d", 1), ("2d", 2), ("3d", 3)])
def test_rope_scores_depend_only_on_relative_offsets(kind, ndim):
    fn = {"1d": lambda p: rope.rope_1d(p[..., 0], HEAD_DIM, 1e4), "2d": lambda p: rope.rope_2d(p, HEAD_DIM, 1e4),
          "3d": lambda p: rope.rope_3d(p, HEAD_DIM, 1e4)}[kind]
    kq, kk, kp = jax.random.split(jax.random.key(0), 3)
    q, k = jax.random.normal(kq, (HEAD_DIM,)), jax.random.normal(kk, (HEAD_DIM,))
    pos_q = jnp.array([3.0, 5.0, 1.0][:ndim])
    pos_k = jnp.array([7.0, 2.0, 4.0][:ndim])
    shifts = jax.random.uniform(kp, (4, ndim), minval=-20, maxval=20)

    @jax.jit
    def scores():
        pairs = score(q, k, fn(pos_q), fn(pos_k))
        shifted = jax.vmap(lambda s: score(q, k, fn(pos_q + s), fn(pos_k + s)))(shifts)
        moved = jax.vmap(lambda e: score(q, k, fn(pos_q), fn(pos_k + e)))(jnp.eye(ndim))
        return pairs, shifted, moved

    base, shifted, moved = scores()
    # cos/sin of angles up to (position * frequency) carry eps * |angle| each; positions here reach ~27, and the
    # score sums head_dim products (measured at most 2.8 eps of the score's scale).
    assert_close(shifted, jnp.full(4, base), ulps=128)
    # ... and really depend on the offset, along every axis.
    assert np.all(np.abs(np.asarray(moved) - float(base)) > 1e-3)


def test_interpolated_rope_at_2x_resolution_equals_1x_positions_scaled():
    scale = rope.interpolation_scale(8, 16)
    assert scale == 0.5
    t1, s1 = rope.grid_positions(5, 8, 8)
    t2, s2 = rope.grid_positions(10, 16, 16, spatial_scale=scale, temporal_scale=scale)
    # The 2x grid covers the 1x range; every other row/column/frame lands exactly on a 1x position.
    assert float(s2.max()) == pytest.approx(float(s1.max()) + 0.5)
    even = s2.reshape(16, 16, 2)[::2, ::2].reshape(-1, 2)
    np.testing.assert_array_equal(even, s1)
    np.testing.assert_array_equal(t2[::2], t1)
    np.testing.assert_allclose(rope.rope_2d(s2, 32, 1e4), rope.rope_2d(rope.grid_positions(1, 16, 16)[1] * 0.5,
                                                                        32, 1e4))
    np.testing.assert_allclose(rope.rope_2d(even, 32, 1e4), rope.rope_2d(s1, 32, 1e4))
    np.testing.assert_allclose(rope.rope_1d(t2[::2], 32, 1e4), rope.rope_1d(t1, 32, 1e4))
    # Half-way positions sit between the 1x angles (interpolation, not extrapolation to 2x the range).
    assert float(rope.rope_1d(t2, 32, 1e4)[:, 0].max()) < 5.0

"""Kernel tuning scopes and the host-side launch-geometry helpers."""
import threading

import triton

from mambadna.kernels.tuning import Tuned, cdiv, next_pow2
from mambadna.kernels.norm.triton import NormTuning


def test_host_geometry_helpers_equal_tritons():
    for a in range(0, 2100):
        assert next_pow2(a) == triton.next_power_of_2(a), a
        for b in (1, 2, 3, 7, 16, 32, 33, 512):
            assert cdiv(a, b) == triton.cdiv(a, b), (a, b)


def test_tuned_scopes_nest_and_stay_in_their_thread():
    t = Tuned("test_tuning", NormTuning())
    with t.use(rows=64) as outer:
        assert t.get() is outer and outer.rows == 64 and outer.warps == 4
        with t.use(warps=1):
            assert (t.get().rows, t.get().warps) == (64, 1)  # changes the current tuning
        with t.use(NormTuning(), warps=2):
            assert (t.get().rows, t.get().warps) == (4096, 2)  # or a given base
        seen = []
        th = threading.Thread(target=lambda: seen.append(t.get()))
        th.start()
        th.join()
        assert seen == [NormTuning()]
    assert t.get() == NormTuning()

"""cpp DPP kernel: same number of windows, different plane sizes; op time per window and ratio to avg_pool2d (1 thread).

Shows whether small layers are bound by per-plane overhead: run from the repository root.
"""
import torch, time, statistics
from poolbench.impls.dpp_ext import ops
from poolbench.dpp import dpid_filter
ops.load_cpu(); torch.set_num_threads(1); P = torch.ops.poolbench_dpp
def t(fn, n=15):
    fn(); ts = []
    for _ in range(n):
        a = time.perf_counter(); fn(); ts.append(time.perf_counter() - a)
    return statistics.median(ts)
for full in (False, True):
    res = {}
    for shape in [(1, 8, 112, 112), (1, 128, 28, 28), (1, 512, 14, 14)]:
        C = shape[1]; x = torch.randn(shape); a = torch.ones(C); l = torch.ones(C)
        W, B = (dpid_filter(C), torch.zeros(C)) if full else (None, None)
        g = torch.randn(1, C, shape[2] // 2, shape[3] // 2)
        r = []
        for _ in range(5):
            avg = t(lambda: torch.nn.functional.avg_pool2d(x, 2, 2))
            f = t(lambda: P.dpp_forward(x, a, l, W, B, 2, 2, 0, False, 1e-3, False))
            b = t(lambda: P.dpp_backward(g, x, a, l, W, B, 2, 2, 0, False, 1e-3, False))
            r.append((f / avg, b / avg, f))
        fr, br, f = (statistics.median(v) for v in zip(*r))
        print(f"{'full' if full else 'lite'} {shape}: fwd/avg {fr:.2f} bwd/avg {br:.2f} fwd ns/window {f / (x.numel() / 4) * 1e9:.1f}", flush=True)

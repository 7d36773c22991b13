"""Benchmark of the noise-preserving patch loss (medsynth_nb.wasserstein), all ratios measured in one run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/wasserstein.py [--quick]

Compares, on the same float32 tensors, forward and forward+backward:
  exact (numpy sort, the CPU default) | the previous exact implementation (commit 08964a7, copied below as the
  baseline) | exact (torch.sort) | the paper's IPOT-100 (beta = 10 max C, chunked) | a Python loop of ot.emd2 |
  POT's batched ot.wasserstein_1d (torch backend, differentiable) | plain l1 (the floor)
at training sizes: 2-D 8x1x128^2 with n = 8 (lowdose-gan's 2-D patch), 3-D 4x1x32x64^2 with n = 4 (the paper's
4^3 patches) and the demo preset's 8x1x32^2 crops with n = 8 (where per-call costs dominate), with no offset and with a fixed random offset (training draws one per call; wrapping costs a copy).
It prints the NP/l1 ratio (forward+backward) before (previous implementation) and after, and checks the agreement
with POT (float64, per patch) and with the previous implementation (float32, bit for bit).
IPOT-100 and the ot.emd2 loop are timed on a subset of the patches and extrapolated linearly in the number of
patches (both cost the same per patch). Times are the minimum over repeats (the machine is shared; the minimum is
the least disturbed run), all taken before any memory is measured, with glibc's default allocator. Peak memory is
then the rise of the process's peak resident set (VmHWM, reset through /proc/self/clear_refs, glibc's mmap threshold
fixed so that freed buffers leave the resident set) during one forward+backward, inputs excluded; where that is
unavailable, tracemalloc's peak (numpy allocations only) is shown instead. (Fixing the mmap threshold makes every
large buffer a fresh mmap that page-faults when first written: before issue 21 the times were taken that way, which
added ~3 ms to every l1 call and made the NP/l1 ratios look about half what they are in training.) torch runs
single-threaded by default (numpy's sort is single-threaded too, and on a shared CPU multi-threaded torch ops are
erratic); --threads N changes that.
"""
from __future__ import annotations

import argparse
import math
import platform
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from medsynth_nb.utils import check_tensor, make_generator  # noqa: E402
from medsynth_nb.wasserstein import (_check_patch_size, _resolve_offset, draw_offset, extract_patches,  # noqa: E402
                                     ipot_w1, patch_grid, wasserstein_patch_loss)


# --- previous implementation (commit 08964a7), the exact numpy path, copied as the baseline --------------------------
def _prev_patches(x, n, off):
    spatial, d = tuple(x.shape[2:]), x.ndim - 2
    grid = patch_grid(spatial, n)
    if all(s % n == 0 for s in spatial):
        if any(off): x = torch.roll(x, shifts=tuple(-o for o in off), dims=tuple(range(2, 2 + d)))
    else:
        for k, (s, g, o) in enumerate(zip(spatial, grid, off)):
            if s % n == 0 and o == 0: continue
            idx = (torch.arange(g * n, device=x.device) + o) % s
            x = x.index_select(2 + k, idx)
    B, C = x.shape[:2]
    shape = [B, C]
    for g in grid: shape += [g, n]
    x = x.reshape(shape)
    perm = [0, 1] + [2 + 2 * k for k in range(d)] + [3 + 2 * k for k in range(d)]
    return x.permute(perm).reshape(B, C, math.prod(grid), n ** d)


def _prev_np_sort(a, with_perm):
    if not with_perm: return np.sort(a, axis=-1), None
    m = a.shape[-1]
    if a.dtype == np.float32 and m <= 2 ** 28:
        k = a.astype(np.float64)
        kv = k.view(np.int64)
        kv |= np.arange(m, dtype=np.int64)
        k.sort(axis=-1)
        perm = kv & (2 ** int(math.ceil(math.log2(max(m, 2)))) - 1)
        return k.astype(np.float32), perm
    perm = np.argsort(a, axis=-1)
    return np.take_along_axis(a, perm, axis=-1), perm


class _PrevSortedW1(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y):
        nx, ny = ctx.needs_input_grad[:2]
        xs, px = _prev_np_sort(x.detach().numpy(), nx)
        ys, py = _prev_np_sort(y.detach().numpy(), ny)
        d = torch.from_numpy(xs) - torch.from_numpy(ys)
        if nx or ny:
            ctx.save_for_backward(torch.sign(d), None if px is None else torch.from_numpy(px),
                                  None if py is None else torch.from_numpy(py))
        return d.abs_().mean(-1)

    @staticmethod
    def backward(ctx, gw):
        s, px, py = ctx.saved_tensors
        gs = s * (gw[:, None] / s.shape[-1])
        gx = None if px is None else torch.empty_like(gs).scatter_(1, px, gs)
        gy = None if py is None else torch.empty_like(gs).scatter_(1, py, gs).neg_()
        return gx, gy


def previous_loss(pred, target, patch_size=4, offset=None, reduction="sum"):
    "The exact loss as it was at commit 08964a7 (numpy backend): NaN scans, autograd cut, _SortedW1 on rows."
    check_tensor(pred, "pred", ndim=(4, 5)); check_tensor(target, "target", ndim=(4, 5))
    spatial = tuple(pred.shape[2:])
    n = _check_patch_size(patch_size, spatial)
    off = _resolve_offset(offset, spatial, n, None, "code")
    x, y = _prev_patches(pred, n, off), _prev_patches(target, n, off)
    x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    w = _PrevSortedW1.apply(x.contiguous(), y.contiguous())
    return w.sum() if reduction == "sum" else w.mean() if reduction == "mean" else w


def _status() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmHWM", "VmRSS")):
                k, v = line.split(":"); out[k] = int(v.split()[0]) * 1024
    return out


def _glibc():
    "glibc handle with a fixed mmap threshold, so freed large buffers leave the resident set (None elsewhere)."
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 256 * 1024)  # M_MMAP_THRESHOLD: fixed, no dynamic growth that would hide peaks
        return libc
    except (OSError, AttributeError):
        return None


LIBC = None   # glibc with a fixed mmap threshold: set only after every time is taken (see the docstring)


def _can_reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f: f.write("5")
        return "VmHWM" in _status()
    except OSError:
        return False


HWM = _can_reset_hwm()


def peak_bytes(fn) -> tuple[int, str]:
    "Peak extra memory of one call of fn (bytes) and how it was measured."
    if HWM:
        if LIBC is not None: LIBC.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f: f.write("5")
        before = _status()["VmRSS"]
        fn()
        return max(_status()["VmHWM"] - before, 0), "rss"
    tracemalloc.start(); fn(); _, peak = tracemalloc.get_traced_memory(); tracemalloc.stop()
    return peak, "tracemalloc"


def best_time(fn, reps: int) -> float:
    "Minimum wall time of fn over reps calls, after one warm-up call (seconds)."
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    return min(ts)


def fwd_bwd(loss_fn, x, y):
    "Callables for forward only and forward+backward of loss_fn(pred, target)."
    def fwd():
        with torch.no_grad(): loss_fn(x, y)
    def both():
        p = x.detach().requires_grad_()
        loss_fn(p, y).backward()
    return fwd, both


def random_offset(d: int, n: int) -> tuple[int, ...]:
    "A fixed draw of the code's random offset (the first one with every component non-zero), the same for all."
    for seed in range(100):
        o = draw_offset(d, n, make_generator(seed))
        if all(o): return o
    raise RuntimeError("no offset with all components non-zero")


def methods(shape, n, off, sub_ipot, sub_emd):
    "(label, loss_fn(pred, target), repeats divisor, time scale, note) for one case."
    import ot
    d, m = len(shape) - 2, n ** (len(shape) - 2)
    P = shape[0] * shape[1] * math.prod(math.ceil(s / n) for s in shape[2:])

    def pot1d(p, t):
        xp, yp = extract_patches(p, n).reshape(-1, m), extract_patches(t, n).reshape(-1, m)
        return ot.wasserstein_1d(xp.T, yp.T, p=1).sum()

    K = min(sub_ipot, P)
    def ipot_sub(p, t):
        xp, yp = extract_patches(p, n).reshape(-1, m), extract_patches(t, n).reshape(-1, m)
        return ipot_w1(xp[:K], yp[:K], n_iter=100, beta=10.0, chunk=1024).sum()

    K2 = min(sub_emd, P)
    u = np.full(m, 1.0 / m)
    def emd_loop(p, t):
        xp, yp = extract_patches(p, n).reshape(-1, m), extract_patches(t, n).reshape(-1, m)
        tot = 0.0
        for a, b in zip(xp[:K2], yp[:K2]):
            if p.requires_grad:
                uu = torch.from_numpy(u).to(p)
                tot = tot + ot.emd2(uu, uu, (a[:, None] - b[None, :]).abs())
            else:
                tot = tot + ot.emd2(u, u, np.abs(a.numpy()[:, None] - b.numpy()[None, :]))
        return tot if torch.is_tensor(tot) else torch.tensor(tot)

    return [("l1 (floor)", lambda p, t: F.l1_loss(p, t), 1, 1.0, ""),
            ("exact, numpy sort (default)", lambda p, t: wasserstein_patch_loss(p, t, n, backend="numpy"), 1, 1.0, ""),
            (PREV, lambda p, t: previous_loss(p, t, n), 1, 1.0, "the baseline of issue 21"),
            (f"exact, offset {off}", lambda p, t: wasserstein_patch_loss(p, t, n, off, backend="numpy"), 1, 1.0,
             "wrapped: one more copy each way"),
            (f"{PREV}, offset {off}", lambda p, t: previous_loss(p, t, n, off), 1, 1.0, ""),
            ("exact, torch.sort", lambda p, t: wasserstein_patch_loss(p, t, n, backend="torch"), 2, 1.0, ""),
            ("POT wasserstein_1d, batched", pot1d, 3, 1.0, ""),
            ("paper IPOT-100 (chunked)", ipot_sub, 0, P / K,
             f"timed on {K} of {P} patches (one chunk), time extrapolated; peak is per chunk"),
            ("loop of ot.emd2", emd_loop, 0, P / K2, f"timed on {K2} of {P} patches, time extrapolated")], P, m


PREV = "previous implementation (commit 08964a7)"
CASES = [("2-D", (8, 1, 128, 128), 8), ("3-D", (4, 1, 32, 64, 64), 4),
         ("2-D, the demo preset's crops", (8, 1, 32, 32), 8)]   # per-call costs dominate here


def time_case(x, y, meths, reps):
    "label -> (forward s, forward+backward s), minimum over repeats."
    out = {}
    for label, fn, div, scale, _ in meths:
        r = 1 if div == 0 else max(reps // div, 2)
        f, b = fwd_bwd(fn, x, y)
        out[label] = (best_time(f, r) * scale, best_time(b, r) * scale)
    return out


def agreement(x, y, n, off, gen):
    "max |exact - POT| per patch (float64), and bit-equality with the previous implementation (float32)."
    import ot
    m = n ** (x.ndim - 2)
    xs = x[:1, :, :8, :16, :16].double() if x.ndim == 5 else x[:1, :, :32, :32].double()
    ys = y[:1, :, :8, :16, :16].double() if y.ndim == 5 else y[:1, :, :32, :32].double()
    ours = wasserstein_patch_loss(xs, ys, n, off, reduction="none").flatten().numpy()
    xp, yp = extract_patches(xs, n, off).reshape(-1, m).numpy(), extract_patches(ys, n, off).reshape(-1, m).numpy()
    u = np.full(m, 1.0 / m)
    emd = np.array([ot.emd2(u, u, np.abs(a[:, None] - b[None, :])) for a, b in zip(xp, yp)])
    w1d = ot.wasserstein_1d(xp.T, yp.T, p=1)
    same = True
    for o in (None, off):
        p1, p2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        a, b = wasserstein_patch_loss(p1, y, n, o), previous_loss(p2, y, n, o)
        a.backward(); b.backward()
        same &= bool(torch.equal(a, b) and torch.equal(p1.grad, p2.grad))
    return len(ours), float(np.abs(ours - emd).max()), float(np.abs(ours - w1d).max()), same


def report(name, shape, n, off, P, m, meths, times, peaks, agree):
    print(f"\n## {name}: {tuple(shape)}, n = {n}, {P} patches of {m} values, float32; random offset {off}")
    ex = times["exact, numpy sort (default)"]
    print("| method | forward ms | fwd+bwd ms | fwd+bwd / l1 | fwd+bwd / exact | peak MB (fwd+bwd) | note |")
    print("|---|---:|---:|---:|---:|---:|---|")
    l1 = times["l1 (floor)"]
    for label, *_, note in meths:
        tf, tb = times[label]
        pk, how = peaks[label]
        print(f"| {label} | {tf * 1e3:.2f} | {tb * 1e3:.2f} | {tb / l1[1]:.2f} | {tb / ex[1]:.2f} | {pk / 2 ** 20:.1f} | "
              f"{note}{'' if how == 'rss' else f' [{how}]'} |")
    r = lambda lab: times[lab][1] / l1[1]
    before, after = r(PREV), r("exact, numpy sort (default)")
    before_o, after_o = r(f"{PREV}, offset {off}"), r(f"exact, offset {off}")
    print(f"\nNP/l1 (forward+backward), no offset: before {before:.2f}x, after {after:.2f}x "
          f"({times[PREV][1] / ex[1]:.2f}x faster); offset {off}: before {before_o:.2f}x, after {after_o:.2f}x")
    ipot, pot1 = times["paper IPOT-100 (chunked)"][1] / ex[1], times["POT wasserstein_1d, batched"][1] / ex[1]
    print(f"exact vs others (fwd+bwd): IPOT-100 {ipot:.0f}x slower, POT wasserstein_1d {pot1:.1f}x slower, "
          f"ot.emd2 loop {times['loop of ot.emd2'][1] / ex[1]:.0f}x slower, torch.sort path "
          f"{times['exact, torch.sort'][1] / ex[1]:.1f}x")
    k, e_emd, e_1d, same = agree
    print(f"agreement: max |exact - ot.emd2| = {e_emd:.1e}, max |exact - ot.wasserstein_1d| = {e_1d:.1e} over {k} "
          f"float64 patches; values and gradients equal to the previous implementation bit for bit (float32, no "
          f"offset and offset {off}): {same}")
    paper_mem = 6 * P * m * m * 4
    print(f"the paper's unchunked IPOT code would hold ~6·P·m² float32 = {paper_mem / 2 ** 30:.2f} GiB for this input")
    checks = [("exact within 3x of l1 (fwd+bwd), no offset", after <= 3),
              (f"exact within 3x of l1 (fwd+bwd), offset {off}", after_o <= 3),
              ("exact >= 100x faster than IPOT-100 (fwd+bwd)", ipot >= 100),
              ("exact >= 5x faster than batched POT wasserstein_1d (fwd+bwd)", pot1 >= 5),
              ("POT agreement <= 1e-12 (float64)", max(e_emd, e_1d) <= 1e-12), ("bit-equal to previous", same)]
    for lab, ok in checks: print(f"  target {lab}: {'met' if ok else 'NOT met'}")
    return checks


def main(argv=None):
    global LIBC
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and smaller subsets")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    import ot
    print(f"# medsynth_nb NP-loss benchmark — torch {torch.__version__} ({torch.get_num_threads()} threads), numpy "
          f"{np.__version__}, POT {ot.__version__}, {platform.processor() or platform.machine()}, peak memory by "
          f"{'VmHWM (RSS)' if HWM else 'tracemalloc'}")
    reps, sub_ipot, sub_emd = (5, 512, 32) if a.quick else (20, 1024, 128)
    t0 = time.time()
    gen = make_generator(0)
    cases = []
    for name, shape, n in CASES:
        x = torch.randn(shape, generator=gen); y = torch.randn(shape, generator=gen) * 1.3 + 0.1
        off = random_offset(len(shape) - 2, n)
        meths, P, m = methods(shape, n, off, sub_ipot, sub_emd)
        cases.append((name, shape, n, off, x, y, meths, P, m))
    # every time first (small inputs get more repeats: their calls are short and the minimum needs more tries) ...
    times = [time_case(x, y, meths, min(reps * max(1, 2 ** 18 // x.numel()), 10 * reps))
             for *_, x, y, meths, P, m in cases]
    LIBC = _glibc()                                                              # ... then the memory
    all_checks = []
    for (name, shape, n, off, x, y, meths, P, m), tm in zip(cases, times):
        peaks = {label: peak_bytes(fwd_bwd(fn, x, y)[1]) for label, fn, *_ in meths}
        all_checks += report(name, shape, n, off, P, m, meths, tm, peaks, agreement(x, y, n, off, gen))
    print(f"\ntotal benchmark time {time.time() - t0:.0f} s; targets met: {sum(ok for _, ok in all_checks)}/"
          f"{len(all_checks)}")


if __name__ == "__main__":
    main()

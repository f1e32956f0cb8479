"""PDML: vectorised ``pdml_loss`` against the literal Algorithm-1 loop ``pdml_loss_reference``.

A batch like the paper's (16 images x 14 clicks), embeddings of dimension D. Both
implementations draw the same pairing order from equally seeded generators, so they form the
same triples and their losses must agree to float rounding. Times are medians of forward and
forward+backward passes.

    python benchmarks/bench_pdml.py [--images 16] [--points 14] [--dims 320 1280] [--classes 8 59]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pointparse.pdml import pdml_loss, pdml_loss_reference


def _batch(images: int, points: int, dim: int, classes: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.arange(images).repeat_interleave(points)
    # scene-parsing-like label skew: a few frequent classes (wall, sky, ...) and a long tail
    weights = 1.0 / torch.arange(1, classes + 1, dtype=torch.float64)
    labels = torch.multinomial(weights, ids.numel(), replacement=True, generator=g)
    x = torch.randn(ids.numel(), dim, generator=g) * 2
    return x.to(device), labels.to(device), ids.to(device)


def _time(fn, repeats: int, device: str) -> float:
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(images: int, points: int, dim: int, classes: int, device: str, repeats: int, ref_repeats: int) -> dict:
    x, labels, ids = _batch(images, points, dim, classes, device)

    def vec(backward: bool):
        e = x.clone().requires_grad_(backward)
        loss, stats = pdml_loss(e, labels, ids, generator=torch.Generator().manual_seed(1))
        if backward:
            loss.backward()
        return loss, stats, e

    def ref(backward: bool):
        e = x.clone().requires_grad_(backward)
        loss, triples = pdml_loss_reference(e, labels, ids, generator=torch.Generator().manual_seed(1))
        if backward:
            loss.backward()
        return loss, triples, e

    vec(True)  # warm-up
    lv, stats, ev = vec(True)
    lr, triples, er = ref(True)
    out = {
        "N": x.shape[0],
        "D": dim,
        "classes": classes,
        "triples": stats.num_triples,
        "same_triples": stats.num_triples == len(triples),
        "loss_vec": lv.item(),
        "loss_ref": lr.item(),
        "loss_rel_diff": abs(lv.item() - lr.item()) / max(abs(lr.item()), 1e-12),
        "grad_max_abs_diff": (ev.grad - er.grad).abs().max().item(),
        "vec_fwd_ms": 1e3 * _time(lambda: vec(False), repeats, device),
        "vec_fwd_bwd_ms": 1e3 * _time(lambda: vec(True), repeats, device),
        "ref_fwd_ms": 1e3 * _time(lambda: ref(False), ref_repeats, device),
        "ref_fwd_bwd_ms": 1e3 * _time(lambda: ref(True), ref_repeats, device),
    }
    out["speedup_fwd"] = out["ref_fwd_ms"] / out["vec_fwd_ms"]
    out["speedup_fwd_bwd"] = out["ref_fwd_bwd_ms"] / out["vec_fwd_bwd_ms"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--points", type=int, default=14)
    ap.add_argument("--dims", type=int, nargs="+", default=[320, 1280])
    ap.add_argument("--classes", type=int, nargs="+", default=[8, 59])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--ref-repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__}")
    header = f"{'N':>4} {'D':>5} {'C':>3} {'triples':>7} {'vec fwd':>9} {'vec f+b':>9} {'loop fwd':>10} {'loop f+b':>10} {'x fwd':>6} {'x f+b':>6}  equal (loss rel diff, grad max diff)"
    print(header)
    ok = True
    for classes in args.classes:
        for dim in args.dims:
            r = run(args.images, args.points, dim, classes, args.device, args.repeats, args.ref_repeats)
            equal = r["same_triples"] and r["loss_rel_diff"] < 1e-5 and r["grad_max_abs_diff"] < 1e-5
            ok &= equal
            print(
                f"{r['N']:>4} {r['D']:>5} {r['classes']:>3} {r['triples']:>7} "
                f"{r['vec_fwd_ms']:>7.2f}ms {r['vec_fwd_bwd_ms']:>7.2f}ms {r['ref_fwd_ms']:>8.1f}ms {r['ref_fwd_bwd_ms']:>8.1f}ms "
                f"{r['speedup_fwd']:>5.0f}x {r['speedup_fwd_bwd']:>5.0f}x  {equal} ({r['loss_rel_diff']:.1e}, {r['grad_max_abs_diff']:.1e})"
            )
    print("all equal" if ok else "MISMATCH between vectorised and reference PDML")


if __name__ == "__main__":
    main()

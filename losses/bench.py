"""Loss benchmarks on CPU: `python -m losses.bench` or `distill bench losses`.

Prints one table, all rows measured in the same run:
    1. chunked `TokenKL` vs a naive full-softmax KL (+ CE), fwd+bwd at v, b, n: peak memory
       ratio and time ratio (goals <= 0.35x memory at <= 1.3x time);
    2. `MultiLevelOT` (top-k 50, Sinkhorn on every item) vs chunked `TokenKL`: time ratio (goal <= 0.5);
    3. our batched Sinkhorn vs a per-item loop of POT `ot.sinkhorn2(method="sinkhorn_log")`
       (torch backend) at b=16, k=50, n=64 and n=--n: time ratio and max |difference| in
       float64, each in a fresh process (no gradient on either side).

Memory is measured per variant in a fresh subprocess: peak resident set size
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`, the kernel's high-water mark) minus the RSS
just before the loss runs (after the inputs exist), i.e. the extra memory of fwd+bwd,
including the [b, n, v] gradient every variant must hold.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

VARIANTS = ("naive_kl", "chunked_kl", "multilevel_ot")


def _inputs(v: int, b: int, n: int, seed: int = 0):
    from distill.contracts import ModelOutputs, TeacherSignals

    g = torch.Generator().manual_seed(seed)
    student = torch.randn(b, n, v, generator=g).mul_(2.0).requires_grad_(True)
    teacher = torch.randn(b, n, v, generator=g).mul_(2.0)
    ids = torch.randint(0, v, (b, n), generator=g)
    mask = torch.ones(b, n, dtype=torch.bool)
    return (
        student,
        teacher,
        ModelOutputs(mask=mask, token_ids=ids, logits=student),
        TeacherSignals(mask=mask, token_ids=ids, logits=teacher),
    )


def naive_kl(
    student: torch.Tensor, teacher: torch.Tensor, ids: torch.Tensor, temperature: float = 2.0
):
    """The textbook version: full [b, n, v] softmaxes kept alive for backward."""
    lp_s = torch.log_softmax(student / temperature, dim=-1)
    lp_t = torch.log_softmax(teacher / temperature, dim=-1)
    kl = (lp_t.exp() * (lp_t - lp_s)).sum(-1).mean() * temperature**2
    ce = torch.nn.functional.cross_entropy(student.flatten(0, 1), ids.flatten())
    return ce + kl


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _runner(variant: str, s, so, to):
    from losses import MultiLevelOT, TokenKL

    if variant == "naive_kl":
        return lambda: naive_kl(s, to.logits, so.token_ids)
    loss = TokenKL(temperature=2.0) if variant == "chunked_kl" else MultiLevelOT()
    return lambda: loss(so, to).loss


def _worker(variant: str, v: int, b: int, n: int) -> dict:
    """One variant in this process: extra peak memory of one fwd+bwd."""
    s, _, so, to = _inputs(v, b, n)
    run = _runner(variant, s, so, to)
    before = _rss_bytes()
    run().backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"variant": variant, "extra_bytes": peak - before}


def _time_all(v: int, b: int, n: int, repeats: int) -> dict:
    """All variants in one process, interleaved, best of `repeats` (load drifts on a shared CPU)."""
    s, _, so, to = _inputs(v, b, n)
    runs = {name: _runner(name, s, so, to) for name in VARIANTS}
    best = dict.fromkeys(VARIANTS, float("inf"))
    for _ in range(repeats):
        for name, run in runs.items():
            s.grad = None
            start = time.perf_counter()
            run().backward()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _measure(args) -> dict:
    """Memory: a fresh subprocess per variant with every large block mmap-ed, so freed
    memory leaves the RSS at once (glibc otherwise raises its mmap threshold after a free
    and keeps big blocks on the heap). Time: one more subprocess, default allocator,
    variants interleaved."""
    base = [sys.executable, "-m", "losses.bench", "--vocab", str(args.vocab), "--b", str(args.b)]
    base += ["--n", str(args.n), "--repeats", str(args.repeats), "--threads", str(args.threads)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    result = {}
    for variant in VARIANTS:
        out = subprocess.run(
            [*base, "--worker", variant], capture_output=True, text=True, check=True, env=env
        )
        result[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    out = subprocess.run([*base, "--worker", "time"], capture_output=True, text=True, check=True)
    for variant, seconds in json.loads(out.stdout.strip().splitlines()[-1]).items():
        result[variant]["seconds"] = seconds
    return result


def _ot_compare(b: int, n: int, k: int, repeats: int) -> dict:
    import ot

    from losses.sinkhorn import l1_cost, sinkhorn

    g = torch.Generator().manual_seed(1)
    x = torch.rand(b, n, k, generator=g, dtype=torch.float64).softmax(-1)
    y = torch.rand(b, n, k, generator=g, dtype=torch.float64).softmax(-1)
    cost = l1_cost(x, y)

    def ours():
        return sinkhorn(cost, eps=0.1, iters=10, return_plan=False)[0]

    def pot():
        return torch.stack(
            [
                ot.sinkhorn2(
                    torch.full((n,), 1.0 / n, dtype=torch.float64),
                    torch.full((n,), 1.0 / n, dtype=torch.float64),
                    cost[i],
                    0.1,
                    method="sinkhorn_log",
                    numItermax=10,
                    stopThr=0.0,
                    warn=False,
                )
                for i in range(b)
            ]
        )

    ours(), pot()  # warm-up: first calls pay for lazy initialisation
    t_ours, t_pot = [], []
    for _ in range(repeats):  # interleaved, best of
        start = time.perf_counter()
        r = pot()
        t_pot.append(time.perf_counter() - start)
        start = time.perf_counter()
        a = ours()
        t_ours.append(time.perf_counter() - start)
    return {"ours": min(t_ours), "pot": min(t_pot), "max_diff": float((a - r).abs().max())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="losses.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--b", type=int, default=4)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--ot-b", type=int, default=16)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per process; 1 keeps timings stable on a shared CPU (OpenMP barriers stall under load)",
    )
    parser.add_argument("--worker", choices=(*VARIANTS, "time", "ot"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker == "ot":
        print(json.dumps(_ot_compare(args.ot_b, args.n, 50, args.repeats)))
        return 0
    if args.worker == "time":
        print(json.dumps(_time_all(args.vocab, args.b, args.n, args.repeats)))
        return 0
    if args.worker:
        print(json.dumps(_worker(args.worker, args.vocab, args.b, args.n)))
        return 0
    res = _measure(args)
    otcs = {}
    for n in sorted(
        {min(64, args.n), args.n}
    ):  # fresh process each: allocator state skews small timings
        cmd = [
            sys.executable,
            "-m",
            "losses.bench",
            "--worker",
            "ot",
            "--n",
            str(n),
            "--ot-b",
            str(args.ot_b),
        ]
        out = subprocess.run(
            [*cmd, "--repeats", str(max(args.repeats, 3))],
            capture_output=True,
            text=True,
            check=True,
        )
        otcs[n] = json.loads(out.stdout.strip().splitlines()[-1])
    gib = 1024**3
    naive, chunked, mlot = res["naive_kl"], res["chunked_kl"], res["multilevel_ot"]
    print(
        f"losses.bench  v={args.vocab} b={args.b} n={args.n} fwd+bwd, CPU, {torch.get_num_threads()} threads"
    )
    print("memory = peak RSS (ru_maxrss) minus RSS before the loss, fresh subprocess per variant")
    print(
        f"time = best of {args.repeats} interleaved fwd+bwd; load average {os.getloadavg()[0]:.2f} (shared CPU: noisy)"
    )
    print(f"{'variant':<16}{'extra memory GiB':>18}{'seconds':>10}")
    for name, r in res.items():
        print(f"{name:<16}{r['extra_bytes'] / gib:>18.3f}{r['seconds']:>10.3f}")
    rows = [
        ("chunked/naive memory", chunked["extra_bytes"] / naive["extra_bytes"], "<= 0.35"),
        ("chunked/naive time", chunked["seconds"] / naive["seconds"], "<= 1.3"),
        ("MultiLevelOT/chunked time", mlot["seconds"] / chunked["seconds"], "<= 0.5"),
    ]
    for n, otc in otcs.items():
        rows.append(
            (
                f"batched OT / POT loop time (b={args.ot_b}, n={n})",
                otc["ours"] / otc["pot"],
                "<= 1.0",
            )
        )
        rows.append((f"batched OT vs POT max |diff| (n={n})", otc["max_diff"], "<= 1e-5"))
    print(f"{'ratio':<44}{'value':>12}{'goal':>10}")
    for name, value, goal in rows:
        print(f"{name:<44}{value:>12.4g}{goal:>10}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

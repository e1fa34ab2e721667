"""Loss benchmarks on CPU: `python -m losses.bench` or `distill bench losses`.

Prints one table, all rows measured in the same run:
    1. chunked `TokenKL` vs a naive full-softmax KL (+ CE), fwd+bwd at v, b, n: peak memory
       ratio and time ratio (goals <= 0.35x memory at <= 1.3x time);
    2. `MultiLevelOT` (top-k 50, Sinkhorn on every item) vs chunked `TokenKL`: time ratio (goal <= 0.5);
    3. fused hidden -> logits TokenKL (`losses._fused_head`) vs the materialised path
       (logits = lm_head(h), then chunked TokenKL; chunks of 4 positions for both) at
       v=151,936, d=896, b=8, n=256, fwd+bwd,
       with the lm_head trainable and frozen (LoRA students): memory ratio (goal <= 0.25),
       time ratio (goal <= 1.1) and the largest gradient difference;
    4. our batched Sinkhorn vs a per-item loop of POT `ot.sinkhorn2(method="sinkhorn_log")`
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
# hidden -> lm_head -> TokenKL, fwd + bwd; "frozen": the lm_head takes no gradient (LoRA)
HEAD_VARIANTS = ("head_chunked", "head_fused", "frozen_chunked", "frozen_fused")


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


def _head_inputs(v: int, d: int, b: int, n: int, seed: int = 0, trainable: bool = True):
    """Hidden states [b, n, d] and a trainable lm_head [v, d] (Qwen2.5-0.5B's shape by
    default), a dense teacher [b, n, v] and answer ids."""
    from distill.contracts import TeacherSignals

    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, n, d, generator=g).requires_grad_(True)
    head = torch.nn.Linear(d, v, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(v, d, generator=g) / d**0.5)
    head.weight.requires_grad_(trainable)
    teacher = torch.randn(b, n, v, generator=g).mul_(2.0)
    ids = torch.randint(0, v, (b, n), generator=g)
    mask = torch.ones(b, n, dtype=torch.bool)
    return hidden, head, TeacherSignals(mask=mask, token_ids=ids, logits=teacher)


def _head_runner(variant: str, hidden, head, teacher):
    """The materialised path (logits = head(h), then chunked TokenKL) or the fused one."""
    from distill.contracts import ModelOutputs
    from losses import TokenKL

    # 4 positions x b = 8 rows = 32 rows per chunk, for both: the fused path's temporaries
    # scale with it (the materialised path's peak is the [b, n, v] logits and gradient)
    loss = TokenKL(temperature=2.0, chunk_size=4)
    kw = dict(mask=teacher.mask, token_ids=teacher.token_ids)
    if variant.endswith("chunked"):
        return lambda: loss(ModelOutputs(**kw, logits=head(hidden)), teacher).loss
    return lambda: loss(ModelOutputs(**kw, llm_hidden=hidden, head=head), teacher).loss


def _head_worker(variant: str, args) -> dict:
    hidden, head, teacher = _head_inputs(
        args.head_vocab, args.head_d, args.head_b, args.head_n,
        trainable=not variant.startswith("frozen"),
    )  # fmt: skip
    run = _head_runner(variant, hidden, head, teacher)
    before = _rss_bytes()
    run().backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"variant": variant, "extra_bytes": peak - before}


def _head_time(args) -> dict:
    """All head variants in one process, interleaved, best of `repeats`; the frozen ones
    run with the lm_head's requires_grad off."""
    hidden, head, teacher = _head_inputs(args.head_vocab, args.head_d, args.head_b, args.head_n)
    runs = {name: _head_runner(name, hidden, head, teacher) for name in HEAD_VARIANTS}
    best = dict.fromkeys(HEAD_VARIANTS, float("inf"))
    grads = {}
    for _ in range(args.repeats):
        for name, run in runs.items():
            head.weight.requires_grad_(not name.startswith("frozen"))
            hidden.grad, head.weight.grad = None, None
            start = time.perf_counter()
            run().backward()
            best[name] = min(best[name], time.perf_counter() - start)
            if not name.startswith("frozen"):
                grads[name] = (hidden.grad.clone(), head.weight.grad.clone())
    diff = max(
        float((a - b).abs().max()) for a, b in zip(grads["head_fused"], grads["head_chunked"])
    )
    return {**best, "max_grad_diff": diff}


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


def _measure_head(args) -> dict:
    """The fused-head rows: as `_measure`, a fresh subprocess per variant for memory."""
    base = [sys.executable, "-m", "losses.bench", "--repeats", str(args.repeats)]
    base += ["--threads", str(args.threads), "--head-vocab", str(args.head_vocab)]
    base += ["--head-d", str(args.head_d), "--head-b", str(args.head_b)]
    base += ["--head-n", str(args.head_n)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    result = {}
    for variant in HEAD_VARIANTS:
        out = subprocess.run(
            [*base, "--worker", variant], capture_output=True, text=True, check=True, env=env
        )
        result[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    out = subprocess.run([*base, "--worker", "head_time"], capture_output=True, text=True,
                         check=True)  # fmt: skip
    timing = json.loads(out.stdout.strip().splitlines()[-1])
    for variant in HEAD_VARIANTS:
        result[variant]["seconds"] = timing[variant]
    result["max_grad_diff"] = timing["max_grad_diff"]
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
    parser.add_argument("--head-vocab", type=int, default=151936, help="fused-head rows: v")
    parser.add_argument("--head-d", type=int, default=896, help="fused-head rows: hidden width")
    parser.add_argument("--head-b", type=int, default=8, help="fused-head rows: batch")
    parser.add_argument("--head-n", type=int, default=256, help="fused-head rows: answer tokens")
    parser.add_argument(
        "--only", choices=("all", "kl", "head"), default="all",
        help="which rows: all, the KL/OT rows, or the fused-head rows",
    )  # fmt: skip
    parser.add_argument(
        "--worker", choices=(*VARIANTS, *HEAD_VARIANTS, "time", "head_time", "ot"),
        help=argparse.SUPPRESS,
    )  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker == "head_time":
        print(json.dumps(_head_time(args)))
        return 0
    if args.worker in HEAD_VARIANTS:
        print(json.dumps(_head_worker(args.worker, args)))
        return 0
    if args.worker == "ot":
        print(json.dumps(_ot_compare(args.ot_b, args.n, 50, args.repeats)))
        return 0
    if args.worker == "time":
        print(json.dumps(_time_all(args.vocab, args.b, args.n, args.repeats)))
        return 0
    if args.worker:
        print(json.dumps(_worker(args.worker, args.vocab, args.b, args.n)))
        return 0
    gib = 1024**3
    rows = []
    print(f"losses.bench  CPU, {torch.get_num_threads()} threads")
    print("memory = peak RSS (ru_maxrss) minus RSS before the loss, fresh subprocess per variant")
    print(
        f"time = best of {args.repeats} interleaved fwd+bwd; load average "
        f"{os.getloadavg()[0]:.2f} (shared CPU: noisy)"
    )
    print(f"{'variant':<16}{'extra memory GiB':>18}{'seconds':>10}  shapes")
    if args.only in ("all", "kl"):
        rows += _kl_rows(args, gib)
    if args.only in ("all", "head"):
        head = _measure_head(args)
        shapes = f"v={args.head_vocab} d={args.head_d} b={args.head_b} n={args.head_n}"
        for name in HEAD_VARIANTS:
            r = head[name]
            print(f"{name:<16}{r['extra_bytes'] / gib:>18.3f}{r['seconds']:>10.3f}  {shapes}")
        for label, f, m in (("trainable lm_head", "head_fused", "head_chunked"),
                            ("frozen lm_head", "frozen_fused", "frozen_chunked")):  # fmt: skip
            fused, mat = head[f], head[m]
            rows += [
                (f"fused/materialised memory, {label}", fused["extra_bytes"] / mat["extra_bytes"],
                 "<= 0.25"),
                (f"fused/materialised time, {label}", fused["seconds"] / mat["seconds"],
                 "<= 1.1"),
            ]  # fmt: skip
        rows.append(("fused vs materialised max |grad diff|", head["max_grad_diff"], "<= 1e-5"))
    print(f"{'ratio':<44}{'value':>12}{'goal':>10}")
    for name, value, goal in rows:
        print(f"{name:<44}{value:>12.4g}{goal:>10}")
    return 0


def _kl_rows(args, gib) -> list[tuple[str, float, str]]:
    """Measure and print the KL/OT variants; return their ratio rows."""
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
    naive, chunked, mlot = res["naive_kl"], res["chunked_kl"], res["multilevel_ot"]
    shapes = f"v={args.vocab} b={args.b} n={args.n}"
    for name, r in res.items():
        print(f"{name:<16}{r['extra_bytes'] / gib:>18.3f}{r['seconds']:>10.3f}  {shapes}")
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
    return rows


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""Benchmarks: the playground against bare PyTorch, side by side in one run.

    .venv/bin/python bench/run.py            # all, writes bench/results.md
    .venv/bin/python bench/run.py warm comm  # some

Each benchmark prints its figures and a verdict against its target. Every
target is a ratio (or a relative error) of two things measured here, in
this run, on this machine: absolute times on a shared 2-core machine mean
little.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import bare  # noqa: E402
import playground as pg  # noqa: E402
from playground.spec.config import cpu_count  # noqa: E402
from playground.predict.predict import bubble_fraction  # noqa: E402

ROWS: list[dict] = []
RUNNING = [""]
"""The benchmark now running: each row is filed under it."""


def report(name: str, figures: str, target: str, ok: bool, note: str = "") -> None:
    row = {"group": RUNNING[0], "benchmark": name, "figures": figures, "target": target,
           "met": "yes" if ok else "no", "note": note}
    ROWS.append(row)
    print(f"[{row['met']:>3}] {name}: {figures} (target {target}) {note}", flush=True)


def warm() -> None:
    """Warm re-run latency, and a cold run against a bare torch spawn doing
    the same training (seed-mlp, 2 ranks, 20 steps)."""
    config = pg.RunConfig(model="seed-mlp", strategy="data", world_size=2, steps=20)
    pool = pg.default_pool()
    pool.shutdown()
    pg.run(config)  # starts the pool
    warm_times = []
    for _ in range(7):
        t = time.perf_counter()
        pg.run(config)
        warm_times.append(time.perf_counter() - t)
    fresh = []  # a new seed each time: the single-device baseline is computed anew
    for seed in range(1, 6):
        t = time.perf_counter()
        pg.run(config.replace(seed=seed))
        fresh.append(time.perf_counter() - t)
    pool.shutdown()
    cold, bare_wall = [], []
    for _ in range(3):
        t = time.perf_counter()
        pg.run(config, warm=False)
        cold.append(time.perf_counter() - t)
        bare_wall.append(bare.ddp_training("seed-mlp", 2, 32, 20)["wall_s"])
    w, c, b = statistics.median(warm_times), statistics.median(cold), statistics.median(bare_wall)
    report("warm re-run latency", f"median {w:.2f} s over 7 runs", "<= 0.5 s", w <= 0.5,
           "the baseline of a config already run is reused")
    f = statistics.median(fresh)
    report("warm run, new seed", f"median {f:.2f} s over 5 runs", "<= 0.5 s", f <= 0.5,
           "baseline trained anew in the caller each time")
    report("cold run vs bare torch spawn", f"{c:.2f} s vs {b:.2f} s = {c / b:.2f}x (medians of 3, interleaved)",
           "<= 1.2x", c / b <= 1.2)


def recording() -> None:
    """Throughput of the data strategy, recording on, against a plain DDP
    loop (mlp, 2 ranks, 64 per rank, 100 steps)."""
    config = pg.RunConfig(model="mlp", strategy="data", world_size=2, global_batch=128, steps=100)
    ours, plain = [], []
    for _ in range(3):
        ours.append(pg.run(config).throughput_samples_per_s)
        plain.append(bare.ddp_training("mlp", 2, 128, 100)["throughput"])
    o, p = statistics.median(ours), statistics.median(plain)
    report("recording overhead", f"{o:.0f} vs {p:.0f} samples/s = {o / p:.2f}x (medians of 3, interleaved)",
           ">= 0.95x", o / p >= 0.95)


def comm() -> None:
    """Recorded all-reduce time of B bytes against a bare gloo all-reduce."""
    for nbytes in (1 << 20, 16 << 20):
        model = nn.Sequential(bare.Blob(nbytes))
        data = (torch.randn(64, 1), torch.randn(64, 1))
        config = pg.RunConfig(model="custom", strategy="data", world_size=2, steps=21, global_batch=16)
        result = pg.run(config, model=model, dataset=data)
        recorded = statistics.median(
            e["end"] - e["joined"] for e in result.ranks[0].timeline
            if e["kind"] == "all_reduce" and e["bytes"] == nbytes)
        bare_s = bare.all_reduce_time(nbytes)
        ratio = recorded / bare_s
        report(f"all-reduce fidelity, {nbytes >> 20} MiB", f"recorded {1e3 * recorded:.2f} ms vs bare "
               f"{1e3 * bare_s:.2f} ms = {ratio:.2f}x", "<= 1.25x", ratio <= 1.25)


def p2p() -> None:
    """Recorded point-to-point time per message of a 1F1B pipeline (mlp, 2
    ranks, 4 micro-batches of 16: 8 KiB activations and gradients), from the
    moment both sides had posted it (``joined``) to its completion, against
    a bare gloo isend/irecv of the same bytes (half a ping-pong)."""
    config = pg.RunConfig(model="mlp", strategy="pipeline", schedule="1f1b", world_size=2, split_points=(5,),
                          micro_batches=4, global_batch=64, steps=30)
    result = pg.run(config)
    messages = [max(0.0, e["end"] - e["joined"]) for r in result.ranks for e in r.timeline
                if e["kind"] in ("send", "recv") and e["start"] >= r.step_times[1][0]]
    nbytes = {e["bytes"] for r in result.ranks for e in r.timeline if e["kind"] == "recv"}
    bare_s = bare.p2p_time(max(nbytes))
    recorded = statistics.mean(messages)
    # The same receives ended where the rank next looked (its wait returned),
    # as they were recorded before completions were stamped as they happen.
    looked = [max(0.0, max(e["end"], e["waited"]) - e["joined"]) for r in result.ranks for e in r.timeline
              if e["kind"] in ("send", "recv") and e["start"] >= r.step_times[1][0]]
    ratio = recorded / bare_s["mean_s"]
    report("point-to-point fidelity, 1F1B", f"recorded {1e3 * recorded:.3f} ms per message (mean of "
           f"{len(messages)}; median {1e3 * statistics.median(messages):.3f}) vs bare isend/irecv of "
           f"{max(nbytes) >> 10} KiB {1e3 * bare_s['mean_s']:.3f} ms (median {1e3 * bare_s['median_s']:.3f}) "
           f"= {ratio:.2f}x", "<= 1.5x", ratio <= 1.5,
           f"ended where the rank next looked instead: {1e3 * statistics.mean(looked):.3f} ms per message")


def fair() -> None:
    """Data parallelism of the cnn at global batch 1024 on 2 ranks against
    the single-device run, both at one thread per device (threads_per_rank=1)."""
    base = dict(model="cnn", global_batch=1024, steps=8, threads_per_rank=1)
    single, data = [], []
    for _ in range(3):
        single.append(pg.run(pg.RunConfig(strategy="single", world_size=1, **base)).throughput_samples_per_s)
        data.append(pg.run(pg.RunConfig(strategy="data", world_size=2, **base)).throughput_samples_per_s)
    s, d = statistics.median(single), statistics.median(data)
    report("data parallel speed-up, cnn, 2 ranks", f"{d:.0f} vs {s:.0f} samples/s single-device = {d / s:.2f}x "
           "(medians of 3, interleaved; 1 thread per device)", ">= 1.6x", d / s >= 1.6)


def bubble() -> None:
    """Measured idle share of GPipe and 1F1B at 2 even stages (mlp, 8 steps)
    against the schedule's table replayed with the run's own measured times
    (``bubble["replayed"]``), each rank, and beside (p-1)/(m+p-1), m = 2, 4, 8."""
    for schedule in ("gpipe", "1f1b"):
        for m in (2, 4, 8):
            config = pg.RunConfig(model="mlp", strategy="pipeline", schedule=schedule, world_size=2,
                                  split_points=(5,), micro_batches=m, global_batch=256 * m, steps=8)
            result = pg.run(config)
            measured, replayed = result.bubble["measured"], result.bubble["replayed"]
            formula = bubble_fraction(schedule, 2, m)
            gaps = [abs(r - x) - max(0.05, 0.2 * x) for x, r in zip(measured, replayed)]
            report(f"bubble {schedule} m={m}",
                   f"measured {', '.join(f'{x:.3f}' for x in measured)} vs replayed "
                   f"{', '.join(f'{x:.3f}' for x in replayed)} (ranks 0, 1); formula {formula:.3f}",
                   "replayed within max(0.05, 20%) of measured, each rank", max(gaps) <= 0)


def scale() -> None:
    """A sweep over world sizes 1, 2, 4, 8 (mlp, data, 10 steps), plotted."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    t0 = time.perf_counter()
    sizes, throughput = [1, 2, 4, 8], []
    for n in sizes:
        strategy = "single" if n == 1 else "data"
        result = pg.run(pg.RunConfig(model="mlp", strategy=strategy, world_size=n, global_batch=256, steps=10))
        assert result.passed
        throughput.append(result.throughput_samples_per_s)
    wall = time.perf_counter() - t0
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    ax.plot(sizes, throughput, marker="o", label="measured")
    ax.plot(sizes, [throughput[0] * n for n in sizes], linestyle="--", color="grey", label="linear speed-up")
    ax.set_xlabel("ranks (world size)")
    ax.set_ylabel("samples / s")
    ax.set_title(f"mlp, data parallel, batch 256, on {cpu_count()} cores")
    ax.legend()
    path = os.path.join(os.path.dirname(__file__), "scale.png")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    figures = ", ".join(f"{n}: {t:.0f}" for n, t in zip(sizes, throughput))
    report("scale sweep 1-2-4-8 ranks", f"samples/s {figures}; sweep wall {wall:.1f} s", "completes and plots",
           True, "ranks above 2 share the 2 cores")


def app() -> None:
    """The app's click to result drawn against ``run()`` alone, in one run:
    Run clicked on the Playground, timed until its job has ended, which is
    once the open tab's picture is set (the check and key numbers come
    before it), against a call to ``run()`` of the same config; warm pool and
    baseline, one untimed round first, then 5 rounds interleaved, medians."""
    from playground.views.app import Playground

    configs = {"seed-mlp data, 2 ranks, 20 steps": pg.RunConfig(model="seed-mlp", strategy="data", world_size=2,
                                                                 steps=20),
               "transformer 1f1b m=4, 2 ranks, 10 steps": pg.RunConfig(model="transformer", strategy="pipeline",
                                                                        world_size=2, schedule="1f1b",
                                                                        micro_batches=4, steps=10)}
    for name, config in configs.items():
        widget = Playground(config=config)
        alone, drawn = [], []
        for round in range(6):
            t = time.perf_counter()
            pg.run(config)
            a = time.perf_counter() - t
            t = time.perf_counter()
            widget.run_button.click()
            assert widget.wait(timeout=300) and widget.result is not None, widget.status.value
            d = time.perf_counter() - t
            assert "timeline" in widget.figures and len(widget.figures) == 1
            if round:  # the first round starts the pool, trains the baseline and loads fonts
                alone.append(a)
                drawn.append(d)
        a, d = statistics.median(alone), statistics.median(drawn)
        report(f"app, {name}", f"click to drawn {d:.2f} s vs run() {a:.2f} s = {d / a:.2f}x (medians of 5, "
               "interleaved)", "<= 1.5x", d / a <= 1.5)


def sizes() -> None:
    """A change of device count on the warm pool: the first run at a new
    size against the next run at that size, and the 1-2-4-8 sweep against
    the sum of its four warm runs (mlp, data; one device is single)."""
    pool = pg.default_pool()
    pool.shutdown()

    def config(n: int) -> pg.RunConfig:
        return pg.RunConfig(model="mlp", strategy="single" if n == 1 else "data", world_size=n, global_batch=256,
                            steps=10)

    pg.run(config(1))  # the pool's rank factory starts here, once
    first, again = {}, {}
    t0 = time.perf_counter()
    for n in (1, 2, 4, 8):
        t = time.perf_counter()
        pg.run(config(n))
        first[n] = time.perf_counter() - t
    sweep = time.perf_counter() - t0
    for n in (1, 2, 4, 8):
        t = time.perf_counter()
        pg.run(config(n))
        again[n] = time.perf_counter() - t
    worst = max((first[n] / again[n], n) for n in (2, 4, 8))
    report("first run at a new device count", ", ".join(f"{n}: {first[n]:.2f} s vs {again[n]:.2f} s" for n in (2, 4, 8))
           + f"; worst {worst[0]:.2f}x (at {worst[1]})", "<= 3x the next run at that size", worst[0] <= 3)
    warm_sum = sum(again.values())
    report("sweep 1-2-4-8 on the pool", f"{sweep:.2f} s vs {warm_sum:.2f} s for its four warm runs = "
           f"{sweep / warm_sum:.2f}x", "<= 5x", sweep / warm_sum <= 5, "ranks above 2 share the 2 cores")


def _pss(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))


def binder() -> None:
    """Memory of a notebook session with the app and 4 devices, as Binder
    counts it: the proportional set size (PSS) of the kernel (this process,
    with the widget app, ipywidgets and matplotlib loaded) plus every
    process of its pool, after the app ran, on 4 devices, the transformer
    pipeline (1F1B), the transformer under FSDP and the cnn data-parallel,
    every result tab opened each time. ipykernel itself (about 40 MiB) is
    not in this process: ``binder_session.py`` measures a real kernel."""
    from playground.views.app import Playground

    pool = pg.default_pool()
    pool.shutdown()
    app = Playground()
    for config in (pg.RunConfig(model="transformer", strategy="pipeline", world_size=4, schedule="1f1b",
                                micro_batches=4, steps=5),
                   pg.RunConfig(model="transformer", strategy="fsdp", world_size=4, steps=5),
                   pg.RunConfig(model="cnn", strategy="data", world_size=4, steps=5)):
        app.load(config)
        assert app.config == config, app.status.value
        app.run_button.click()
        assert app.wait(timeout=600) and app.result is not None and app.result.passed, app.status.value
        for tab in range(len(app.results.titles)):
            app.results.selected_index = tab
        assert len(app.figures) == len(app.results.titles)
    pids = [os.getpid()] + pool.process_pids()
    total = sum(_pss(p) for p in pids)
    parts = ", ".join(f"{_pss(p) / 2**20:.0f}" for p in pids)
    report("Binder-sized: 4 devices + the notebook (PSS)", f"{total / 2**30:.2f} GiB after transformer 1f1b, "
           f"transformer fsdp and cnn data at 4 devices in the app, every tab drawn (MiB per process: kernel, "
           f"ranks, factory: {parts})", "<= 1.2 GiB", total <= 1.2 * 2**30)


def plan_at_scale() -> None:
    """Planning Llama-3-70B on 512 ranks (dp 64 x tp 8) in this process:
    wall time of ``plan()`` (imports done), and the largest resident set the
    process reached, against the model's 282 GB of float32 weights."""
    import resource

    from playground.planning.planner import plan

    config = {"model": "llama3-70b", "strategy": "hybrid", "world_size": 512, "dp": 64, "tp": 8,
              "global_batch": 64, "optimizer": "adam"}
    # Imports warmed first: the timed plans measure planning, not importing.
    plan({"model": "gpt2", "strategy": "data", "world_size": 2, "global_batch": 2, "sequence_length": 8})
    times = []
    for _ in range(3):
        start = time.perf_counter()
        planned = plan(config)
        times.append(time.perf_counter() - start)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    median = statistics.median(times)
    report("plan: llama3-70b, 512 ranks (dp 64 x tp 8)",
           f"median {median:.1f} s over 3 ({', '.join(f'{t:.1f}' for t in times)}); {len(planned.kinds)} kinds of "
           f"rank run; peak RSS {rss / 2**30:.2f} GiB against {planned.num_params * 4 / 1e9:.0f} GB of weights",
           "<= 10 s, nothing at full size", median <= 10 and rss < 8 * 2**30)


BENCHMARKS = {"warm": warm, "recording": recording, "comm": comm, "p2p": p2p, "fair": fair, "bubble": bubble,
              "sizes": sizes, "binder": binder, "scale": scale, "app": app,
              "plan": plan_at_scale}


def main(names: list[str]) -> None:
    """Run the named benchmarks (all without names) and update their rows in
    results.json and results.md; the other benchmarks' rows stay as they were."""
    for name in names or list(BENCHMARKS):
        RUNNING[0] = name
        BENCHMARKS[name]()
    pg.default_pool().shutdown()
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "results.json")
    ran = {r["group"] for r in ROWS}
    kept = []
    if os.path.exists(path):
        with open(path) as f:
            kept = [r for r in json.load(f) if r.get("group") not in ran]
    order = list(BENCHMARKS)
    rows = sorted(kept + ROWS, key=lambda r: order.index(r["group"]) if r.get("group") in order else len(order))
    with open(path, "w") as f:
        json.dump(rows, f, indent=1)
    lines = ["| benchmark | measured | target | met |", "|---|---|---|---|"]
    lines += [f"| {r['benchmark']} | {r['figures']} | {r['target']} | {r['met']} |" for r in rows]
    with open(os.path.join(here, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])

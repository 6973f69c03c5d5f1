"""The per-rank table the CLI prints."""

from __future__ import annotations

from typing import Any


def check_sentence(baseline: dict[str, Any]) -> str:
    """The check in one line: what was compared, the verdict, the figure
    and its tolerance. Where equality with one device is not expected
    (``baseline["why"]``), the check compared losses, and says so."""
    verdict = "PASS" if baseline["passed"] else "FAIL"
    diff = baseline["max_abs_param_diff"]
    params = f"max |Δparam| = {diff:.2e}" if diff else "max |Δparam| = 0 (bit-identical)"
    if baseline.get("compares") == "loss":
        return (f"loss check: {verdict}  mean loss {baseline['mean_loss_rel_diff']:.1%} from one device's "
                f"(tolerance {baseline['loss_tolerance']:.0%}); {params}, not expected to match")
    return f"baseline check: {verdict}  {params} (tolerance {baseline['tolerance']:.0e})"


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.2f}"


def format_table(result) -> str:
    c = result.config
    head = (f"{c.model} · {c.strategy} · world {result.world_size} · {result.device}/{result.backend} · "
            f"{c.steps} steps · split {list(result.split_points) or '-'} · "
            f"{result.throughput_samples_per_s:.0f} samples/s")
    cols = ("rank", "pp", "dp", "blocks", "compute ms", "comm ms", "wait ms", "overhead ms",
            "params MiB", "grads MiB", "optim MiB", "activ MiB", "sent MiB", "recv MiB")
    rows = []
    for r in result.ranks:
        t = r.time
        held = r.stages or [(r.pp_rank, *r.blocks)]  # every stage the rank holds, in stage order
        blocks = ",".join(f"{a}-{b - 1}" if b - 1 > a else str(a) for _, a, b in sorted(held))
        rows.append((str(r.rank), str(r.pp_rank), str(r.dp_rank), blocks,
                     f"{1e3 * t['compute']:.1f}", f"{1e3 * t['comm']:.1f}", f"{1e3 * t.get('wait', t['idle']):.1f}",
                     f"{1e3 * t.get('overhead', 0.0):.1f}",
                     _mib(r.memory["params"]), _mib(r.memory["grads"]), _mib(r.memory["optimizer"]),
                     _mib(r.memory["activations_peak"]), _mib(r.bytes_sent), _mib(r.bytes_recv)))
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(cols)]
    lines = [head, "  ".join(h.rjust(w) for h, w in zip(cols, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in rows]
    b = result.baseline
    lines.append(f"{check_sentence(b)}, final loss {result.losses[-1]:.6f} vs "
                 f"{b['losses'][-1]:.6f} single-device (Δ {b['final_loss_diff']:.2e})")
    if b.get("compares_with"):  # results saved before the levers lack it
        lines.append(f"  compared with {b['compares_with']}; tolerance: {b['tolerance_why']}")
    if result.bubble is not None:
        measured = ", ".join(f"{b:.0%}" for b in result.bubble["measured"])
        replayed = result.bubble.get("replayed")
        replay = f"; replayed schedule {', '.join(f'{b:.0%}' for b in replayed)}" if replayed else ""
        lines.append(f"pipeline bubble: measured idle share per rank {measured}{replay}; "
                     f"formula {result.bubble['formula']} = {result.bubble['predicted']:.0%}")
    if result.zero is not None:
        z, comm = result.zero, result.zero["communication"]
        memory = ", ".join(f"{name} {z['formula'][name]} = {_mib(round(z['memory'][name]))}"
                           for name in ("params", "grads", "optimizer"))
        lines.append(f"ZeRO stage {z['stage']} (paper's formulas, MiB per rank; Ψ = {z['psi']}, N_d = {z['n_d']}, "
                     f"K = {z['k']}): {memory}; per step {comm['formula']}, on a ring "
                     f"{_mib(round(comm['ring_bytes_per_step']))} each way, predicted "
                     f"{_mib(comm['predicted_bytes_per_step'])} ({comm['collectives']})")
    if result.accuracy is not None:
        lines.append(f"held-out accuracy: {result.accuracy:.3f} (single-device {b['accuracy']:.3f})")
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)

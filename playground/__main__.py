"""Command line: ``python -m playground run [flags] --json FILE``.

Bad arguments exit with code 2 and one line on stderr, before any process
starts; a run that fails exits with code 1 and says which rank and why.
What the ranks print comes first, each line prefixed with ``[rank r]``.
"""

from __future__ import annotations

import argparse
import sys

from playground.spec.config import (LOOPED_SCHEDULES, OPTIMIZERS, PRECISIONS, RECOMPUTE, SCHEDULES, STRATEGIES,
                                     V_SCHEDULES, ConfigError, RunConfig)
from playground.zoo.models import MODEL_NAMES


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


def _int_list(field: str):
    def parse(text: str) -> tuple[int, ...]:
        parts = [p for p in text.replace(",", " ").split() if p]
        try:
            return tuple(int(p) for p in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{field}={text!r}: must be integers separated by commas") from None
    return parse


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    d = RunConfig()
    p.add_argument("--model", default=d.model, help=f"one of {', '.join(MODEL_NAMES)} (default {d.model})")
    p.add_argument("--strategy", default=d.strategy, help=f"one of {', '.join(STRATEGIES)} (default {d.strategy})")
    p.add_argument("--world-size", type=int, default=None, help="ranks (default: 2, or 1 for single)")
    p.add_argument("--split-points", type=_int_list("split_points"), default=None,
                   help="block indices where stages end, e.g. 4 or 3,6 (default: balanced)")
    p.add_argument("--global-batch", type=int, default=d.global_batch,
                   help=f"samples per step (default {d.global_batch})")
    p.add_argument("--batch-partition", type=_int_list("batch_partition"), default=None,
                   help="shares per data-parallel rank, e.g. 3,1 (default: even)")
    p.add_argument("--micro-batches", type=int, default=d.micro_batches, help="micro-batches (pipeline)")
    p.add_argument("--schedule", default=d.schedule, help=f"pipeline schedule: {', '.join(SCHEDULES)}")
    p.add_argument("--virtual-stages", type=int, default=None,
                   help="stages per pipeline rank (default: 2 for the interleaved, looped and V schedules, "
                        "which need at least 2; else 1)")
    p.add_argument("--dp", type=int, default=None, help="hybrid: data-parallel size of the mesh")
    p.add_argument("--pp", type=int, default=None, help="hybrid: pipeline ranks per replica")
    p.add_argument("--tp", type=int, default=None, help="hybrid: tensor-parallel ranks per layer")
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps (default {d.steps})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"learning rate (default {d.lr})")
    p.add_argument("--optimizer", default=d.optimizer, help=f"one of {', '.join(OPTIMIZERS)}")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--sync-batchnorm", action="store_true",
                   help="normalise BatchNorm over the whole batch, not each data-parallel rank's shard")
    p.add_argument("--recompute", default=d.recompute,
                   help=f"activation recomputation: {', '.join(RECOMPUTE)} (default {d.recompute})")
    p.add_argument("--precision", default=d.precision,
                   help=f"compute precision: {', '.join(PRECISIONS)} (default {d.precision})")
    p.add_argument("--grad-accumulation", type=int, default=d.grad_accumulation,
                   help="micro-steps per optimizer step, gradients reduced in the last (default 1)")
    p.add_argument("--zero-stage", type=int, default=None,
                   help="ZeRO stage for data parallelism: 0 DDP, 1 optimizer state sharded, 2 gradients too, "
                        "3 parameters too (default: the strategy's own)")
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda")
    p.add_argument("--backend", default=d.backend, help="auto, gloo or nccl")
    p.add_argument("--threads-per-rank", type=int, default=d.threads_per_rank,
                   help=f"CPU threads per rank and for the single-device reference (default {d.threads_per_rank})")
    p.add_argument("--timeout", type=float, default=d.timeout_s, help="seconds before a run is stopped")
    p.add_argument("--max-world-size", type=int, default=d.max_world_size)
    p.add_argument("--cold", action="store_true", help="fresh processes for this run, not the warm pool")
    p.add_argument("--json", metavar="FILE", help="write the result JSON here")
    p.add_argument("--plots", metavar="DIR", help="save the run's pictures here as PNG")
    p.add_argument("--trace", metavar="FILE", help="save the timeline as a Chrome trace (Perfetto, chrome://tracing)")


def config_from_args(a: argparse.Namespace) -> RunConfig:
    if a.world_size is not None:
        world = a.world_size
    elif a.strategy == "hybrid":  # the mesh decides
        world = (a.dp or 1) * (a.pp or 1) * (a.tp or 1)
    else:
        world = 1 if a.strategy == "single" else 2
    virtual = a.virtual_stages if a.virtual_stages is not None else \
        (2 if a.schedule in LOOPED_SCHEDULES + V_SCHEDULES else 1)
    return RunConfig(model=a.model, strategy=a.strategy, world_size=world, split_points=a.split_points,
                     global_batch=a.global_batch, batch_partition=a.batch_partition,
                     micro_batches=a.micro_batches, schedule=a.schedule, virtual_stages=virtual,
                     dp=a.dp, pp=a.pp, tp=a.tp, steps=a.steps, lr=a.lr,
                     optimizer=a.optimizer, seed=a.seed, device=a.device, backend=a.backend,
                     timeout_s=a.timeout, max_world_size=a.max_world_size,
                     threads_per_rank=a.threads_per_rank, sync_batchnorm=a.sync_batchnorm,
                     recompute=a.recompute, precision=a.precision, grad_accumulation=a.grad_accumulation,
                     zero_stage=a.zero_stage)


def _run_and_print(config: RunConfig, json_path: str | None = None, plots_dir: str | None = None,
                   warm: bool = True, trace_path: str | None = None) -> int:
    from playground.host.launcher import RunError
    from playground.result.run_result import labelled_output
    from playground.host.runner import run

    try:
        result = run(config, warm=warm)
    except ConfigError as e:
        print(f"playground: error: {e}", file=sys.stderr)
        return 2
    except RunError as e:
        printed = labelled_output(e.outputs)
        if printed:
            print(printed)
        print(f"playground: run failed: {e}", file=sys.stderr)
        return 1
    if result.rank_output():
        print(result.rank_output())
    return _show(result, json_path, plots_dir, trace_path)


def _show(result, json_path: str | None = None, plots_dir: str | None = None, trace_path: str | None = None) -> int:
    """Print the table and write what was asked for; 0 when the check passed."""
    print(result.summary())
    if json_path:
        with open(json_path, "w") as f:
            f.write(result.to_json(indent=1))
        print(f"result written to {json_path}")
    if trace_path:
        print(f"trace written to {result.save_chrome_trace(trace_path)}")
    if plots_dir:
        from playground.views.plots import save_all

        for path in save_all(result, plots_dir):
            print(f"picture written to {path}")
    return 0 if result.passed else 1


DEMO = [
    ("The source text's two-layer example, h = W1 x + b1 on rank 0, y = W2 h + b2 on rank 1",
     RunConfig(model="seed-mlp", strategy="model", world_size=2, split_points=(1,), steps=10)),
    ("Data parallel with uneven shares 3:1 - rank 1 has less work and waits",
     RunConfig(model="mlp", strategy="data", world_size=2, batch_partition=(3, 1), global_batch=128, steps=8)),
    ("A 2-stage pipeline of the digits MLP, 1F1B schedule, 4 micro-batches",
     RunConfig(model="mlp", strategy="pipeline", schedule="1f1b", world_size=2, micro_batches=4,
               global_batch=128, steps=8)),
]


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m playground", description="Real multi-process training of a split model.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run_p = sub.add_parser("run", help="train one configuration and print what each rank did")
    _add_run_flags(run_p)
    config_p = sub.add_parser("config", help="print a RunConfig as JSON (for torchrun ... --config FILE)")
    _add_run_flags(config_p)
    load_p = sub.add_parser("load", help="merge the reports torchrun's ranks wrote to DIR and print the table")
    load_p.add_argument("directory")
    load_p.add_argument("--json", metavar="FILE", help="write the result JSON here")
    show_p = sub.add_parser("show", help="read a saved result (--json's file) and print, draw or trace it again")
    show_p.add_argument("result", metavar="RESULT.json")
    show_p.add_argument("--plots", metavar="DIR", help="save its pictures here as PNG")
    show_p.add_argument("--trace", metavar="FILE", help="save its timeline as a Chrome trace")
    sub.add_parser("demo", help="a few illustrative runs")
    sub.add_parser("models", help="list the models and their blocks")
    args = parser.parse_args(argv)

    if args.command == "run":
        try:
            config = config_from_args(args)
        except ConfigError as e:
            parser.exit(2, f"{parser.prog}: error: {e}\n")
        return _run_and_print(config, args.json, args.plots, warm=not args.cold, trace_path=args.trace)
    if args.command == "config":
        try:
            print(config_from_args(args).to_json())
        except ConfigError as e:
            parser.exit(2, f"{parser.prog}: error: {e}\n")
        return 0
    if args.command == "load":
        from playground.host.runner import load_result

        try:
            result = load_result(args.directory)
        except (OSError, ValueError) as e:
            parser.exit(2, f"{parser.prog}: error: {e}\n")
        print(result.summary())
        if args.json:
            with open(args.json, "w") as f:
                f.write(result.to_json(indent=1))
        return 0 if result.passed else 1
    if args.command == "show":
        from playground.result.run_result import RunResult

        try:
            with open(args.result) as f:
                result = RunResult.from_json(f.read())
        except (OSError, ValueError, KeyError, TypeError) as e:
            parser.exit(2, f"{parser.prog}: error: {args.result}: not a saved result ({type(e).__name__}: {e})\n")
        return _show(result, plots_dir=args.plots, trace_path=args.trace)
    if args.command == "models":
        from playground.zoo.models import MODELS, model_block_infos

        for name, spec in MODELS.items():
            print(f"{name}: {spec.description}")
            for b in model_block_infos(name):
                print(f"  {b.index:2d} {b.label:16s} {b.params:8d} params {b.flops:10d} FLOPs/sample")
        return 0
    status = 0
    for title, config in DEMO:
        print(f"\n== {title}")
        status |= _run_and_print(config)
    return status


if __name__ == "__main__":
    sys.exit(main())

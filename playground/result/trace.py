"""A run's timeline in the Chrome trace event format (Perfetto,
chrome://tracing)."""

from __future__ import annotations


from typing import Any

from playground.rank.recorder import COMPUTE_KINDS



TRACE_STREAMS = {"compute": 0, "p2p": 1, "collective": 2}


def _stream(kind: str) -> str:
    if kind in COMPUTE_KINDS:
        return "compute"
    return "p2p" if kind in ("send", "recv") else "collective"


def chrome_trace(result) -> dict[str, Any]:
    events: list[dict[str, Any]] = []
    for r in result.ranks:
        name = f"rank {r.rank} · pp {r.pp_rank} · dp {r.dp_rank}" + (f" · tp {r.tp_rank}" if r.tp_rank else "")
        events.append({"ph": "M", "name": "process_name", "pid": r.rank, "args": {"name": name}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": r.rank, "args": {"sort_index": r.rank}})
        for stream, tid in TRACE_STREAMS.items():
            events.append({"ph": "M", "name": "thread_name", "pid": r.rank, "tid": tid, "args": {"name": stream}})
        for e in r.timeline:
            label = e["kind"] + (f" mb {e['micro_batch']}" if e.get("micro_batch") is not None else "")
            if e.get("peer") is not None:
                label += f" {'to' if e['kind'] == 'send' else 'from'} rank {e['peer']}"
            args = {k: v for k, v in e.items() if k not in ("kind", "start", "end")}
            events.append({"ph": "X", "name": label, "cat": e["kind"], "pid": r.rank,
                           "tid": TRACE_STREAMS[_stream(e["kind"])], "ts": e["start"] * 1e6,
                           "dur": max(0.0, e["end"] - e["start"]) * 1e6, "args": args})
        for i, (a, b) in enumerate(r.step_times):
            events.append({"ph": "i", "name": f"step {i}", "pid": r.rank, "tid": 0, "ts": a * 1e6, "s": "p"})
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"config": result.config.to_dict(), "device": result.device, "backend": result.backend}}

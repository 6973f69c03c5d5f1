"""The planned schedule replayed with a run's own measured times.

``predict.bubble_fraction`` counts compute alone, in equal parts. A real step
also spends time moving each micro-batch across a cut and doing the
pipeline runtime's own host work between actions (splitting the batch,
posting messages, scaling gradients, reading the loss), and that grows with
the number of micro-batches. The replay puts those back: it runs torch's
action table (``pipeline.schedule_table``) through ``formulas.replay_schedule``,
step after step, with, for every action, message and gap, what this run
measured in that step. What is left idle in the replay is what the plan,
with these costs, forces; where the measurement differs, the run waited
for something the plan does not say.

Each step gets its own measured times rather than their means over the
steps: an action starts at the later of two times, and the later of two
noisy times is on average later than the later of their means. On a
shared machine one stalled message (tens of milliseconds, against about
one for a forward) decides its step; spread over every step as a mean it
would mostly vanish into slack, and the replay would fall short of the
measured idle time.

Host work is part of the replay. The measured idle share counts
everything outside compute and communication, host work included, so a
replay without it would predict only the waiting and fall short of the
measurement by the host work, more so the more micro-batches there are.
The host work after an action is the part of the gap to the rank's next
action that is not spent waiting: the gap less the time inside a receive
(posted, then waited for) and inside a send that completed in the gap
(waited for: a send completing while the rank works elsewhere ends
later). Within a forward on the last stage, the gap before its loss is
host work too.
"""

from __future__ import annotations

from playground.predict.formulas import Action, RankReplay, ReplayCosts, output_stage, replay_schedule, replayed_idle
from playground.rank.report import RankReport

PASS_KINDS = ("forward", "backward", "backward_input", "backward_weight")
"""Recorded kinds that are actions of the table, named as the table names them."""


def replay_run(ranks: list[RankReport], table: dict[int, list[Action]]) -> dict[int, tuple[float, RankReplay]] | None:
    """Replay every pipeline replica of a run: {rank: (replayed idle share,
    its replay)}, on the run's clock and numbering steps as the run does.
    ``ranks``: all of the run's ranks; a replica is the ranks sharing a
    (dp_rank, tp_rank), its pp ranks in stage order. None when a rank's
    recorded actions are not its table's."""
    replicas: dict[tuple[int, int], list[RankReport]] = {}
    for r in sorted(ranks, key=lambda r: r.pp_rank):
        replicas.setdefault((r.dp_rank, r.tp_rank), []).append(r)
    first = 1 if len(ranks[0].step_times) > 1 else 0
    out = {}
    for replica in replicas.values():
        costs = measured_costs(replica, table)
        if costs is None:
            return None
        replays = replay_schedule(table, costs, len(costs))
        shares = replayed_idle(replays)
        origin = min(r.step_times[first][0] for r in replica)  # the replay's 0
        for pp_rank, r in enumerate(replica):
            replay = replays[pp_rank]
            shifted = [(kind, s, mb, step + first, start + origin, end + origin)
                       for kind, s, mb, step, start, end in replay.actions]
            out[r.rank] = (shares[pp_rank], RankReplay(shifted, replay.compute, replay.comm, replay.end + origin))
    return out


def measured_costs(replica: list[RankReport], table: dict[int, list[Action]]) -> list[ReplayCosts] | None:
    """What each action, message and gap of one pipeline replica took in
    each timed step (all but step 0, or step 0 alone): one ReplayCosts per
    step; ``replica[i]`` is pp rank i. None when a rank's recorded actions
    in a step are not its table's. The replay's time 0 is the first rank's
    start of the first timed step."""
    first = 1 if len(replica[0].step_times) > 1 else 0
    steps = len(replica[0].step_times) - first
    origin = min(r.step_times[first][0] for r in replica)
    costs = [ReplayCosts(duration={}) for _ in range(steps)]
    ends: list[dict[Action, float]] = [{} for _ in range(steps)]  # each action's end, for its message's post
    for i, r in enumerate(replica):
        expected = [(k, s, mb) for k, s, mb in table[i]]
        recvs = [(e["start"], e["end"]) for e in r.timeline if e["kind"] == "recv"]
        sends = [(e["start"], e["end"]) for e in r.timeline if e["kind"] == "send"]
        seen = []
        for a, b in r.step_times[first:]:
            actions, optimizer = _actions_in(r.timeline, a, b)
            if [key for key, *_ in actions] != expected or optimizer is None:
                return None
            seen.append((a, actions, optimizer))
        for k, (a, actions, optimizer) in enumerate(seen):
            c = costs[k]
            # The first step's lead also holds the time this rank began it after the first rank did.
            c.lead[i] = _host_time(a, actions[0][1], recvs, sends) + (a - origin if k == 0 else 0.0)
            c.after[i] = []
            for j, (_, start, end, busy) in enumerate(actions):
                c.duration[table[i][j]] = busy
                ends[k][table[i][j]] = end
                following = actions[j + 1][1] if j + 1 < len(actions) else optimizer[0]
                c.after[i].append((end - start - busy) + _host_time(end, following, recvs, sends))
            c.optimizer[i] = optimizer[1] - optimizer[0]
            if k + 1 < len(seen):
                c.between[i] = _host_time(optimizer[1], seen[k + 1][0], recvs, sends)
    for action, pairs in _messages(replica, table, steps).items():
        for k, (send, recv) in enumerate(pairs):
            costs[k].post[action] = max(0.0, send["start"] - ends[k][action])
            costs[k].transfer[action] = max(0.0, recv["end"] - recv.get("joined", recv["start"]))
            costs[k].sent[action] = max(0.0, send["end"] - send.get("joined", send["start"]))
    return costs


def _actions_in(timeline: list[dict], a: float, b: float):
    """The rank's table actions that began in [a, b], in order, each as
    ((kind, stage, micro_batch), start, end, busy), a loss folded into the
    forward before it; and the optimizer step's (start, end)."""
    actions: list[list] = []
    optimizer = None
    for e in sorted((e for e in timeline if a <= e["start"] <= b), key=lambda e: e["start"]):
        if e["kind"] in PASS_KINDS:
            actions.append([(e["kind"], e["stage"], e["micro_batch"]), e["start"], e["end"], e["end"] - e["start"]])
        elif e["kind"] == "loss" and actions:
            actions[-1][2] = e["end"]
            actions[-1][3] += e["end"] - e["start"]
        elif e["kind"] == "optimizer":
            optimizer = (e["start"], e["end"])
    return [tuple(x) for x in actions], optimizer


def _host_time(a: float, b: float, recvs: list[tuple[float, float]], sends: list[tuple[float, float]]) -> float:
    """The part of the gap [a, b] not spent waiting: outside every receive
    and every send that completed within the gap."""
    waits = [(max(s, a), min(e, b)) for s, e in recvs if e > a and s < b]
    waits += [(max(s, a), e) for s, e in sends if a < e <= b]
    covered, reach = 0.0, a
    for s, e in sorted(waits):
        if e > reach:
            covered += e - max(s, reach)
            reach = e
    return max(0.0, (b - a) - covered)


def _messages(replica: list[RankReport], table: dict[int, list[Action]], steps: int) -> dict[Action, list[tuple]]:
    """Per action whose output crosses to another rank: its message in each
    timed step, as (send event, receive event). The n-th message from a
    rank to a peer is the n-th action of its table whose output goes there
    (the n-th send to that peer, the peer's n-th receive from it); each step
    carries the same messages, so a timed step's are the last ones."""
    owner = {s: i for i, actions in table.items() for _, s, _ in actions}
    out: dict[Action, list[tuple]] = {}
    for i, producer in enumerate(replica):
        by_peer: dict[int, list[Action]] = {}
        for action in table[i]:
            to = owner.get(output_stage(action[0], action[1]), i)
            if to != i:
                by_peer.setdefault(to, []).append(action)
        for j, messages in by_peer.items():
            consumer, n = replica[j], steps * len(messages)
            sends = sorted((e for e in producer.timeline if e["kind"] == "send" and e["peer"] == consumer.rank),
                           key=lambda e: e["seq"])
            recvs = sorted((e for e in consumer.timeline if e["kind"] == "recv" and e["peer"] == producer.rank),
                           key=lambda e: e["seq"])
            if len(sends) < n or len(recvs) < n:
                continue
            for k, pair in enumerate(zip(sends[len(sends) - n:], recvs[len(recvs) - n:])):
                out.setdefault(messages[k % len(messages)], []).append(pair)
    return out


def schedule_json(table: dict[int, list[Action]]) -> dict[str, list[list]]:
    """The table as JSON: {"<pp_rank>": [[kind, stage, micro_batch], ...]}."""
    return {str(rank): [list(a) for a in actions] for rank, actions in table.items()}

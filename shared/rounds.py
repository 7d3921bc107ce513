"""The voting-round protocol: an attempt's votes, the issues it has decided, and who
tallies each of its rounds, all in one hash per attempt (`Keys.rounds`, on the run's Cluster
slot), written by the scripts `lua/*.lua`.

An attempt votes in rounds (`shared.voting` says how many votes each draws):

1. **Plan** (`plan_round`, `plan.lua`): before a round's vote jobs are sent, each of its
   votes gets a field `{issue}:{index}` → round, and the round's counter `out/{round}`
   counts them, in one HSET. A round planned already keeps its plan.
2. **Finish**: every vote job finishes its vote once, whether it casts it
   (`record_vote`, `record_vote.lua`: the vote written once into `vote/{issue}:{index}`
   with its event and its call's usage, all one step) or skips it (`finish_vote`,
   `finish_vote.lua`, which writes `-` there). The first write of that field counts
   `out/{round}` down, once, however often the job runs.
3. **Claim**: the job that counts a round's `out/{round}` down to zero closes the round: it
   bills the round's calls to the run (their usage, added up from the votes) and writes its
   own vote's slot into `tally/{round}` (HSETNX) in the same step, and learns it holds the
   tally. A job run again for that vote learns it again (so a lost tally is retried with the
   vote); every other job learns nothing. `round_context` (`claim_tally.lua`) lets a
   `quorum.tally` job claim a round too, under the name `tally`, once no vote is out: whoever
   claims first tallies, the other stands down. A round's jobs are no Celery chord: nothing
   else joins them.
4. **Tally**: the claimant reads the run and the rounds hash (the last vote gets them back
   in the very step that stores it), decides the open issues, and either ends the attempt or
   plans the next round.

Decisions are written once per issue into `decided/{issue}`: early, by the vote whose record
lets `voting.decide_early` decide it (`record_vote.lua`, which mirrors that rule in
`decide_early.lua`, in the same step), or by a tally or a caller (`decide`, `record_once.lua`).
A vote whose issue is decided already is skipped without calling the LLM.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

from quorum.shared.events import Event, IssueDecided, VoteCast, VoteSkipped
from quorum.shared.keys import workflow_of
from quorum.shared.models import Usage, Vote
from quorum.shared.scripts import RedisScripts, mapped
from quorum.shared.state import RunState, usage_counters
from quorum.shared.voting import EARLY_DECISIONS

__all__ = ["RecordedVote", "RoundContext", "RoundStore", "vote_slot"]


_VOTE, _DECIDED = "vote/", "decided/"
_SKIPPED = "-"
"""What a vote's `vote/` field holds when its job cast nothing."""


def _votes(rounds: dict[str, str]) -> list[Vote]:
    """The votes stored in a rounds hash."""
    return [
        Vote.model_validate_json(value)
        for name, value in rounds.items()
        if name.startswith(_VOTE) and value != _SKIPPED
    ]


def _decisions(rounds: dict[str, str]) -> dict[int, IssueDecided]:
    """The decided issues in a rounds hash, with their `issue_decided` events."""
    return {
        int(name.removeprefix(_DECIDED)): IssueDecided.model_validate_json(event)
        for name, event in rounds.items()
        if name.startswith(_DECIDED)
    }


_OUTCOMES = [
    json.dumps({"outcome": d.outcome.value, "reason": d.reason}, separators=(",", ":"))[1:-1]
    for d in EARLY_DECISIONS
]
"""The outcome fields of an `issue_decided` event's JSON for each early decision, in the order
`lua/decide_early.lua` numbers them."""


def _early_args(rule: tuple[str, int, int] | None, cast_: VoteCast, issue: int) -> list[Any]:
    """`record_vote.lua`'s early-rule arguments: the rule (`voting.early_rule`; none: '')
    and the pieces of the `issue_decided` event it writes, the same JSON as the event's own."""
    if rule is None:
        return ["", 0, 0, "", "", "", ""]
    event = IssueDecided(attempt=cast_.attempt, worker=cast_.worker, issue=issue, outcome="passed")
    dumped = event.model_dump_json()
    return [*rule, dumped[: dumped.index(',"outcome":') + 1], *_OUTCOMES]


def _hash(flat: list[str]) -> dict[str, str]:
    """A hash from the flat field/value list that a script's HGETALL returns."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def vote_slot(issue: int, index: int) -> str:
    """The name of a vote in an attempt's rounds hash: `{issue}:{index}`."""
    return f"{issue}:{index}"


def _slot(name: str) -> tuple[int, int]:
    issue, index = name.split(":")
    return int(issue), int(index)


@dataclass(frozen=True)
class RoundContext:
    """What a tally works with, read in one round trip (`RunStore.round_context`)."""

    state: RunState | None
    """The run; None if it is gone."""
    votes: list[Vote]
    """The attempt's stored votes."""
    decided: dict[int, IssueDecided]
    """The attempt's decided issues, with their `issue_decided` events."""
    planned: dict[tuple[int, int], int]
    """Every `(issue, index)` planned in the attempt's rounds so far, with its round."""
    tallier: str | None
    """Who tallies the round; None while votes of it are still out."""

    def plan_of(self, round_: int) -> dict[int, list[int]]:
        """Round `round_`'s votes as planned (issue → indices); empty if it is not planned."""
        plan: dict[int, list[int]] = {}
        for (issue, index), planned_in in sorted(self.planned.items()):
            if planned_in == round_:
                plan.setdefault(issue, []).append(index)
        return plan


def _round_context(
    run_id: str, raw: dict[str, str], rounds: dict[str, str], tallier: str | None
) -> RoundContext:
    """A `RoundContext` from the run and rounds hashes as Redis returns them."""
    return RoundContext(
        state=RunState.parse(run_id, raw) if raw else None,
        votes=_votes(rounds),
        decided=_decisions(rounds),
        planned={  # the slots: not vote/, out/, …
            _slot(name): abs(int(value)) for name, value in rounds.items() if "/" not in name
        },
        tallier=tallier,
    )


@dataclass(frozen=True)
class RecordedVote:
    """What storing a vote tells its job (`RunStore.record_vote`)."""

    votes: list[Vote] | None
    """The votes cast on this vote's issue in the attempt, this one included, if it was new
    (else None): what an early decision counts."""
    decided: bool
    """Whether the vote's issue is decided: already, or by this record (`early`)."""
    last_of: int
    """The round this vote is to tally (0: none)."""
    tally: RoundContext | None
    """What that tally works with, claimed for this vote's slot."""


class RoundStore(RedisScripts):
    """The store's half that keeps an attempt's votes, decisions and rounds."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._record_once = self.script("record_once")
        self._plan = self.script("plan")
        self._record_vote = self.script("record_vote")
        self._finish_vote = self.script("finish_vote")
        self._claim_tally = self.script("claim_tally")

    def _vote_keys(self, run_id: str, attempt: int) -> list[str]:
        """The keys of a vote's scripts: the rounds hash, the events, the run, and a node
        run's workflow hash (billed with the run)."""
        keys = [self.keys.rounds(run_id, attempt), self.keys.events(run_id), self.keys.run(run_id)]
        workflow = workflow_of(run_id)
        return keys if workflow is None else [*keys, self.keys.workflow(workflow)]

    @mapped
    def vote_context(
        self, run_id: str, attempt: int, issue: int, index: int
    ) -> tuple[RunState | None, bool, Vote | None, bool]:
        """In one round trip: the run (None if gone), whether `issue` is decided in this
        attempt, the vote already stored in this slot, and whether the vote has finished
        (a redelivered vote job: it finished, with its vote stored or none cast)."""
        fields = [_DECIDED + str(issue), _VOTE + vote_slot(issue, index)]
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.run(run_id))
            pipe.hmget(self.keys.rounds(run_id, attempt), fields)
            raw, (decided, stored) = pipe.execute()
        return (
            RunState.parse(run_id, raw, shared=True) if raw else None,
            decided is not None,
            Vote.model_validate_json(stored) if stored and stored != _SKIPPED else None,
            stored is not None,
        )

    def _once(self, key: str, run_id: str, name: str, value: str, event: Event) -> bool:
        """Write `name` into the hash at `key` (the run's, or an attempt's rounds hash) once,
        with its event, unless that hash is gone. Returns whether it was written (False:
        `name` was already there). It marks no progress: the step that writes it moves the
        run or plans a round next, or is a vote."""
        keys = [key, self.keys.events(run_id)]
        return bool(self._script(self._record_once, keys, [name, value, event.model_dump_json()]))

    @mapped
    def record_vote(
        self,
        run_id: str,
        attempt: int,
        vote: Vote,
        event: VoteCast,
        usage: Usage,
        *,
        max_votes: int = 999,
        progress: bool = False,
        bill_now: bool = False,
        early: tuple[str, int, int] | None = None,
    ) -> RecordedVote:
        """Store a vote with its call's usage and finish it (`finish_vote`), in one round trip;
        the vote that closes its round bills the round's calls to the run in that step, or
        with `bill_now` (a run with a budget) each vote bills its own at once. A second call
        for a vote stored already is billed at once, and counted once. When this vote is to
        tally its round, what the tally works with comes back in the same round trip; else
        its issue's votes, read up to `max_votes` (the most the run's config lets an issue
        draw; by default the most any config does). `progress`: mark progress on the sweep's
        index too. `early` (`voting.early_rule`): decide the vote's issue early in the same
        step when its votes allow; `decided` then tells that it is."""
        slot = vote_slot(vote.issue, vote.index)
        counters = usage_counters(usage)
        stored = json.dumps({**vote.model_dump(), "usage": {} if bill_now else dict(counters)})
        keys = self._vote_keys(run_id, attempt)
        args = [slot, stored, event.model_dump_json(), int(bill_now), vote.issue, max_votes]
        args += _early_args(early, event, vote.issue)
        args += [x for pair in counters for x in pair]

        def then(pipe: Any) -> None:
            if progress:
                self._touch(pipe, run_id)

        (new, last_of, *read), *_ = self._script_then(self._record_vote, keys, args, then)
        if not read:  # redelivered and not the round's last, or gone
            return RecordedVote(None, False, 0, None)
        if not last_of:  # the issue's decision and votes
            decision, *cast_ = read[0]
            votes = [Vote.model_validate_json(v) for v in cast_ if v and v != _SKIPPED]
            return RecordedVote(votes, decision is not None, 0, None)
        rounds = _hash(read[0])
        tally = _round_context(run_id, _hash(read[1]), rounds, slot)
        votes = [v for v in tally.votes if v.issue == vote.issue]
        decided = vote.issue in tally.decided
        return RecordedVote(votes if new else None, decided, int(last_of), tally)

    @mapped
    def plan_round(
        self,
        run_id: str,
        attempt: int,
        round_: int,
        plan: dict[int, list[int]],
        *,
        progress: bool = False,
    ) -> None:
        """Note the votes a round draws (`plan`: issue → vote indices), before it is sent;
        a round planned already keeps its plan. `progress`: mark progress too, in the same
        round trip."""
        keys, args = self._plan_call(run_id, attempt, round_, plan)

        def then(pipe: Any) -> None:
            if progress:
                self._touch(pipe, run_id)

        self._script_then(self._plan, keys, args, then)

    def _plan_call(
        self, run_id: str, attempt: int, round_: int, plan: dict[int, list[int]], status: str = ""
    ) -> tuple[list[str], list[Any]]:
        """The keys and arguments of `plan.lua` for a round; with `status`, it plans only
        while the run is in that status and in `attempt`."""
        slots = [vote_slot(issue, index) for issue, indices in plan.items() for index in indices]
        keys = [self.keys.rounds(run_id, attempt), self.keys.run(run_id)]
        return keys, [round_, self.ttl_s, status, attempt if status else "", *slots]

    @mapped
    def finish_vote(
        self, run_id: str, attempt: int, issue: int, index: int, event: VoteSkipped | None
    ) -> int:
        """Mark a planned vote finished, once, appending `event` (a skipped vote's) then;
        returns the round this vote is to tally: the one whose last vote it finished (also
        when its job runs again), else 0."""
        keys = self._vote_keys(run_id, attempt)
        args = [vote_slot(issue, index), event.model_dump_json() if event else ""]
        return int(self._script(self._finish_vote, keys, args))

    @mapped
    def votes(self, run_id: str, attempt: int) -> list[Vote]:
        """Every vote stored for the attempt."""
        return _votes(cast(dict[str, str], self.redis.hgetall(self.keys.rounds(run_id, attempt))))

    @mapped
    def decide(self, run_id: str, attempt: int, issue: int, event: IssueDecided) -> bool:
        """Record an issue's decision once (the flag that makes pending votes skip)."""
        key, name = self.keys.rounds(run_id, attempt), _DECIDED + str(issue)
        return self._once(key, run_id, name, event.model_dump_json(), event)

    @mapped
    def decisions(self, run_id: str, attempt: int) -> dict[int, IssueDecided]:
        """The issues decided in the attempt, with their `issue_decided` events."""
        raw = self.redis.hgetall(self.keys.rounds(run_id, attempt))
        return _decisions(cast(dict[str, str], raw))

    @mapped
    def round_context(self, run_id: str, attempt: int, round_: int, claimant: str) -> RoundContext:
        """In one round trip: claim round `round_`'s tally for `claimant` unless someone
        holds it, and read the run and the attempt's rounds hash."""
        rounds = self.keys.rounds(run_id, attempt)

        def then(pipe: Any) -> None:
            pipe.hgetall(self.keys.run(run_id))
            pipe.hgetall(rounds)

        args = [round_, claimant, self.ttl_s]
        owner, raw, hashed = self._script_then(self._claim_tally, [rounds], args, then)
        return _round_context(run_id, raw, hashed, owner or None)

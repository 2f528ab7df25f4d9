"""How long one engine step takes: a linear model in what the step computes.

``step_s = base_s + prefill_token_s * new + prefill_attend_s * new * context / 1000
+ decode_seq_s * running + decode_context_s * context_of_running / 1000``: a prefill pays per
new token and for attending to its context (cached tokens included), a decode step per running
sequence and per 1000 context tokens it reads. The defaults are placeholders of this CPU's
order of magnitude (demo-model-sized steps of a few ms); they are NOT fitted yet: fitting them
on the runner's ``calibrate`` output and a measured run is the simulator's next step.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepCost:
    base_s: float = 0.002
    prefill_token_s: float = 0.00005
    prefill_attend_s: float = 0.00001
    decode_seq_s: float = 0.0002
    decode_context_s: float = 0.00002

    def step_s(self, prefill: list[tuple[int, int]], running_contexts: list[int]) -> float:
        """``prefill``: (new tokens, whole context) of each call prefilled in this step;
        ``running_contexts``: the context of each call decoding in it."""
        s = self.base_s
        for new, context in prefill:
            s += self.prefill_token_s * new + self.prefill_attend_s * new * context / 1000
        s += self.decode_seq_s * len(running_contexts)
        s += self.decode_context_s * sum(running_contexts) / 1000
        return s

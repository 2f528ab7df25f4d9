"""How long one engine step takes: a linear model in what the step computes.

    step_s = base_s                                          (any step)
           + sum over calls prefilled in the step of
               prefill_token_s * new + prefill_attend_s * attended * context / 1000
           + decode_seq_s * running + decode_context_s * context_of_running / 1000

``attended`` is the call's new tokens, or, with ``attend_whole`` (SGLang's torch-native
attention on a CPU, which computes a prefill's causal attention over the whole sequence, its
cached prefix included), its whole context. The defaults are placeholders; ``sim.fit`` fits
the model on ``python -m benchmarks calibrate`` output and a measured run of plain SGLang.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class StepCost:
    base_s: float = 0.002
    prefill_token_s: float = 0.00005
    prefill_attend_s: float = 0.00001
    decode_seq_s: float = 0.0002
    decode_context_s: float = 0.00002
    attend_whole: bool = False

    def prefill_s(self, new: int, context: int) -> float:
        attended = context if self.attend_whole else new
        return self.prefill_token_s * new + self.prefill_attend_s * attended * context / 1000

    def step_s(self, prefill: list[tuple[int, int]], running_contexts: list[int]) -> float:
        """``prefill``: (new tokens, whole context) of each call prefilled in this step;
        ``running_contexts``: the context of each call decoding in it."""
        s = self.base_s + sum(self.prefill_s(new, context) for new, context in prefill)
        s += self.decode_seq_s * len(running_contexts)
        s += self.decode_context_s * sum(running_contexts) / 1000
        return s

    def to_json(self) -> dict:
        return asdict(self)

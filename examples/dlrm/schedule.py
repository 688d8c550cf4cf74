"""Learning-rate schedule of MLPerf DLRMv2's reference: linear warmup, a
constant stretch, then polynomial (power 2) decay to zero.

The factor depends only on the step number, so a resumed run and a run at
another world size apply the same learning rate at every step.
"""


def lr_factor(step, warmup=0, decay_start=0, decay_steps=0):
    """Factor on the base learning rates for training step `step` (1-based).

    warmup N: steps 1..N use step/N. decay (start S, length L): step S + i
    (1 <= i <= L) uses ((L - i) / L)^2, steps after S + L use 0. Neither: 1.
    """
    if warmup and step <= warmup:
        return step / warmup
    if decay_steps and step > decay_start:
        left = max(decay_steps - (step - decay_start), 0)
        return (left / decay_steps) ** 2
    return 1.0

"""Loading optimizer state dicts into fused optimizers, split-bf16 aware.

torch's ``Optimizer.load_state_dict`` casts every floating-point state tensor
to its param's dtype. For a split-bf16 param that would turn the fp32 state
(momentum, exp_avg, ...) into bf16 and the int16 trail into bf16 numbers,
destroying the master weights. ``SplitStateDict.load_state_dict`` keeps float
state in fp32 and the trail in int16, using only torch's public
load-state-dict hooks: the last pre-hook checks the state against the params
and wraps each state tensor in a holder torch passes through uncast, the
first post-hook unwraps it.
"""
import torch

from ..bf16_checkpoint import record_trail_holder
from ..bf16_split import TRAIL, TRAIL_DTYPE


class _Uncast:
    __slots__ = ("tensor",)

    def __init__(self, tensor):
        self.tensor = tensor


class SplitStateDict:
    """Mixin of FusedOptimizer: ``load_state_dict`` for split-bf16 state."""

    def load_state_dict(self, state_dict):
        """torch's load_state_dict, except that float state stays fp32 and the
        split-bf16 ``"trail"`` stays int16 (see the module note). Raises
        ValueError before changing anything if a bf16 param's trail is missing
        or malformed, or a state tensor's shape does not fit its param."""
        pre = self.register_load_state_dict_pre_hook(SplitStateDict._check_and_wrap_state)
        post = self.register_load_state_dict_post_hook(SplitStateDict._unwrap_state, prepend=True)
        try:
            torch.optim.Optimizer.load_state_dict(self, state_dict)
        finally:
            pre.remove()
            post.remove()

    def _check_and_wrap_state(self, state_dict):
        """Pre-hook: validates trails against our params, wraps state tensors."""
        who = type(self).__name__
        saved = [pid for g in state_dict["param_groups"] for pid in g["params"]]
        ours = [p for g in self.param_groups for p in g["params"]]
        if len(saved) != len(ours):
            return None  # torch raises its own clear error on the group sizes
        where = [(gi, pi) for gi, g in enumerate(self.param_groups)
                 for pi in range(len(g["params"]))]
        for idx, (pid, p) in enumerate(zip(saved, ours)):
            st = state_dict["state"].get(pid) or {}
            for key, v in st.items():
                want = self._state_shape(p, key)
                if isinstance(v, torch.Tensor) and want is not None and v.shape != want:
                    gi, pi = where[idx]
                    raise ValueError(
                        f"{who}.load_state_dict: param group {gi}, param {pi} (shape "
                        f"{tuple(p.shape)}): state {key!r} has shape {tuple(v.shape)}, expected "
                        f"{tuple(want)} (saved from a different model?)")
            trail = st.get(TRAIL)
            if p.dtype == torch.bfloat16:
                if trail is None:
                    raise ValueError(
                        f"{who}.load_state_dict: parameter {idx} (shape {tuple(p.shape)}) is "
                        "split bfloat16 but the state dict holds no 'trail' for it (saved from "
                        "an fp32 optimizer?); load fp32 weights with "
                        "ipex_train.load_fp32_state_dict instead")
                if not isinstance(trail, torch.Tensor) or trail.dtype != TRAIL_DTYPE \
                        or trail.shape != p.shape:
                    got = (f"{trail.dtype} {tuple(trail.shape)}" if isinstance(trail, torch.Tensor)
                           else type(trail).__name__)
                    raise ValueError(f"{who}.load_state_dict: the 'trail' of parameter {idx} "
                                     f"must be an int16 tensor of shape {tuple(p.shape)}, got "
                                     f"{got}")
            elif trail is not None:
                raise ValueError(f"{who}.load_state_dict: parameter {idx} is {p.dtype} but the "
                                 "state dict holds a split-bf16 'trail' for it")
        new_state = {}
        for pid, st in state_dict["state"].items():
            if isinstance(st, dict):
                st = {k: _Uncast(v) if isinstance(v, torch.Tensor) else v for k, v in st.items()}
            new_state[pid] = st
        out = dict(state_dict)
        out["state"] = new_state
        return out

    def _state_shape(self, p, key):
        """The shape state `key` of param `p` must have (None: any): the
        param's for every state tensor but the scalar 'step'."""
        return None if key == "step" else p.shape

    def _unwrap_state(self):
        """Post-hook: float state -> fp32, trail -> int16, both in their
        param's memory layout; 'step' as saved."""
        for p, st in self.state.items():
            if not isinstance(st, dict):
                continue
            for k, v in list(st.items()):
                if not isinstance(v, _Uncast):
                    continue
                t = v.tensor.to(device="cpu")
                if k != "step" and k != TRAIL and t.is_floating_point():
                    t = t.to(torch.float32)
                if t.shape != p.shape:
                    t = t.contiguous()
                elif t.stride() != p.stride():  # into the param's layout (empty_like keeps it)
                    t = torch.empty_like(p, dtype=t.dtype).copy_(t)
                st[k] = t  # moved, not copied, where it fits already
            if st.get(TRAIL) is not None:
                record_trail_holder(self, p)

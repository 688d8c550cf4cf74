"""Pieces shared by benchmarks/dlrm.py and benchmarks/dlrm_dcnv2.py: the
baselines' training step, TorchRec's fused tables, and the rate report."""
import torch
import torch.nn.functional as F

VARIANTS = ["stock fp32", "stock + autocast", "TorchRec fp32", "TorchRec + autocast",
            "ours fp32", "ours bf16"]


def stock_tables(cfg):
    """The stock baselines' tables: an nn.EmbeddingBag(sparse=True) per table,
    summing, with the examples/dlrm trainer's initial values."""
    from dlrm.embeddings import initial_table

    dim = cfg.embedding_dim
    return torch.nn.ModuleList(
        torch.nn.EmbeddingBag(n, dim, mode="sum", sparse=True, _weight=initial_table(n, dim, 0, t))
        for t, n in enumerate(cfg.table_sizes()))


def autocast_steps(forward, opt):
    """(fp32 step, bf16-autocast step): BCE on forward(batch)'s logits, then `opt`."""
    def step(b, autocast):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = forward(b)
        loss = F.binary_cross_entropy_with_logits(logits.float(), b.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (lambda b: step(b, False)), (lambda b: step(b, True))


def torchrec_tables(rows, dim, optimizer_type, lr):
    """(feature keys, torchrec FusedEmbeddingBagCollection over FBGEMM's CPU
    kernels): table t of `rows[t]` rows reads feature f{t}."""
    from torchrec import EmbeddingBagConfig
    from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection

    keys = [f"f{t}" for t in range(len(rows))]
    tables = [EmbeddingBagConfig(name=f"t{t}", embedding_dim=dim, num_embeddings=n,
                                 feature_names=[keys[t]]) for t, n in enumerate(rows)]
    return keys, FusedEmbeddingBagCollection(tables=tables, optimizer_type=optimizer_type,
                                             optimizer_kwargs={"lr": lr},
                                             device=torch.device("cpu"))


def dense_parameters(model, ebc):
    """`model`'s parameters less the fused tables' (those update in backward)."""
    fused = {id(p) for p in ebc.parameters()}
    return [p for p in model.parameters() if id(p) not in fused]


def cpu_name():
    """'model name (family F model M)' from /proc/cpuinfo (VMs often shorten the name)."""
    info = {}
    try:
        for line in open("/proc/cpuinfo"):
            k, _, v = line.partition(":")
            info.setdefault(k.strip(), v.strip())
    except OSError:
        return "unknown CPU"
    return f"{info.get('model name', 'unknown CPU')} (family {info.get('cpu family', '?')} " \
           f"model {info.get('model', '?')})"


def fmt(x, width=10):
    return f"{x:{width}.0f} samples/s" if isinstance(x, float) else x


def ratio(a, b):
    return f"{a / b:.2f}x" if isinstance(a, float) and isinstance(b, float) else "n/a"


def print_rates(t, rate, targets, ms_width, rate_width):
    """A line per variant (min / median ms of `t`, samples/s or why not of
    `rate`), then ours' ratios; targets: ours bf16 over stock fp32, stock +
    autocast, TorchRec + autocast, and ours fp32 over stock fp32."""
    for k in VARIANTS:
        ms = (f"{t[k][0] * 1e3:{ms_width}.1f} / {t[k][1] * 1e3:{ms_width}.1f} ms" if k in t
              else " " * (2 * ms_width + 6))
        print(f"  {k:22s} {ms}  {fmt(rate[k], rate_width)}", flush=True)
    r = lambda a, c: ratio(rate[a], rate[c])  # noqa: E731
    print(f"  ours bf16 / stock fp32 {r('ours bf16', 'stock fp32')} (target >= {targets[0]}), "
          f"/ stock + autocast {r('ours bf16', 'stock + autocast')} (target >= {targets[1]}), "
          f"/ TorchRec + autocast {r('ours bf16', 'TorchRec + autocast')} "
          f"(target >= {targets[2]})")
    print(f"  ours fp32 / stock fp32 {r('ours fp32', 'stock fp32')} (target >= {targets[3]}), "
          f"/ TorchRec fp32 {r('ours fp32', 'TorchRec fp32')}")

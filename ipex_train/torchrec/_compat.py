"""The TorchRec internals the sharder relies on, checked when it is imported.

sharding.py and _kernel.py subclass TorchRec's sharded EBC and its lookup and
read private members that TorchRec may change in any release; they were
written against TorchRec 1.8. `check()` looks for every such member (and the
parameters the overrides receive) and raises TorchRecInternalsChanged, naming
the version expected and the member, instead of a later AttributeError or a
silently wrong sharded model. `private(obj, name)` reads an instance member
that only exists after construction, with the same error. DEVELOPING.md
lists them ("TorchRec internals the sharder uses").
"""
import inspect
from typing import Any, Callable, List, Tuple

EXPECTED = "1.8"  # the TorchRec release the sharder was written against


class TorchRecInternalsChanged(ImportError):
    """A TorchRec internal the ipex_train sharder uses is missing or changed."""


def _version() -> str:
    import torchrec
    return getattr(torchrec, "__version__", "unknown")


def message(what: str) -> str:
    return (f"ipex_train.torchrec sharder: {what}. The sharder uses TorchRec internals as of "
            f"TorchRec {EXPECTED}.x; this is TorchRec {_version()}. Install "
            f"torchrec=={EXPECTED}.0 (scripts/install.d/40-torchrec.sh), or port "
            "ipex_train/torchrec/sharding.py and _kernel.py (DEVELOPING.md lists what they use)")


def _fail(what: str) -> TorchRecInternalsChanged:
    return TorchRecInternalsChanged(message(what))


def private(obj: Any, name: str) -> Any:
    """obj.name, a TorchRec private instance member; a clear error if gone."""
    try:
        return getattr(obj, name)
    except AttributeError:
        raise _fail(f"{type(obj).__module__}.{type(obj).__qualname__} has no member "
                    f"{name!r}") from None


def _params(fn: Callable) -> List[str]:
    return list(inspect.signature(fn).parameters)


def _needs() -> List[Tuple[str, Callable[[], bool]]]:
    """(what must hold, test) for each internal; imports lazily so a missing
    module becomes a failed test too."""
    def has(module: str, name: str, attr: str = None, params: List[str] = None):
        def test() -> bool:
            obj = getattr(__import__(module, fromlist=[name]), name)
            if attr is not None:
                obj = getattr(obj, attr)
            return params is None or _params(obj)[:len(params)] == params
        where = f"{module}.{name}" + (f".{attr}" if attr else "")
        return (where + (f"({', '.join(params)}, ...)" if params else ""), test)

    tr, st = "torchrec.distributed", "torch.distributed._shard.sharded_tensor"
    return [
        # sharding.py: the lookup whose kernel factory we override
        has(f"{tr}.embedding_lookup", "GroupedPooledEmbeddingsLookup", "_create_embedding_kernel",
            ["self", "config", "device", "pg", "sharding_type", "env"]),
        has(f"{tr}.embedding_lookup", "GroupedPooledEmbeddingsLookup", "__init__",
            ["self", "grouped_configs", "device", "pg"]),
        # sharding.py: ShardedEmbeddingBagCollection's construction steps
        has(f"{tr}.embeddingbag", "ShardedEmbeddingBagCollection", "__init__",
            ["self", "module", "table_name_to_parameter_sharding", "env", "fused_params",
             "device", "qcomm_codecs_registry", "module_fqn"]),
        has(f"{tr}.embeddingbag", "ShardedEmbeddingBagCollection", "_create_lookups", ["self"]),
        has(f"{tr}.embeddingbag", "ShardedEmbeddingBagCollection", "_initialize_torch_state",
            ["self", "skip_registering"]),
        has(f"{tr}.embeddingbag", "EmbeddingBagCollectionSharder", "__init__",
            ["self", "fused_params", "qcomm_codecs_registry"]),
        has(f"{tr}.embeddingbag", "ShardedEmbeddingBagCollection", "output_dist",
            ["self", "ctx", "output"]),
        has(f"{tr}.embeddingbag", "ShardedEmbeddingBagCollection", "compute_and_output_dist",
            ["self", "ctx", "input"]),
        # sharding.py: the row-wise mean callback we replace (found by identity)
        has(f"{tr}.embeddingbag", "_apply_mean_pooling", params=["keyed_tensor", "divisor"]),
        # _kernel.py: the kernel's base classes and helpers
        has(f"{tr}.embedding_kernel", "BaseEmbedding"),
        has(f"{tr}.embedding_kernel", "get_state_dict",
            params=["embedding_tables", "params", "pg", "destination", "prefix"]),
        has(f"{tr}.composable.table_batched_embedding_slice", "TableBatchedEmbeddingSlice",
            "__init__", ["self", "data", "start_offset", "end_offset", "num_embeddings",
                         "embedding_dim"]),
        has("torchrec.optim.fused", "FusedOptimizer", "__init__",
            ["self", "params", "state", "param_groups"]),
        has("torchrec.optim.fused", "EmptyFusedOptimizer"),
        has("torchrec.modules.embedding_configs", "pooling_type_to_pooling_mode",
            params=["pooling_type", "sharding_type"]),
        # both: ShardedTensors over existing local shards (torch's, pinned at 2.13)
        has(st, "ShardedTensor", "_init_from_local_shards_and_global_metadata",
            ["local_shards", "sharded_tensor_metadata", "process_group"]),
    ]


_checked = False


def check() -> None:
    """Raises TorchRecInternalsChanged unless every internal the sharder uses
    is present with the parameters it expects (checked once per process)."""
    global _checked
    if _checked:
        return
    for what, test in _needs():
        try:
            ok = test()
        except (ImportError, AttributeError, TypeError, ValueError):
            ok = False
        if not ok:
            raise _fail(f"{what} is missing or changed")
    _checked = True

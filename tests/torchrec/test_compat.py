"""The sharder's TorchRec internals: a changed one fails with a clear error
naming the TorchRec version the sharder expects (ipex_train/torchrec/_compat.py)."""
import subprocess
import sys

import pytest
import torchrec
from torchrec.distributed import embedding_lookup, embeddingbag

from ipex_train.torchrec import _compat

pytestmark = pytest.mark.torchrec


@pytest.fixture
def recheck(monkeypatch):
    monkeypatch.setattr(_compat, "_checked", False)
    return _compat.check


def test_internals_present():
    assert torchrec.__version__.startswith(_compat.EXPECTED + ".")
    _compat._checked = False
    _compat.check()


def test_missing_method_names_it_and_the_version(recheck, monkeypatch):
    monkeypatch.delattr(embedding_lookup.GroupedPooledEmbeddingsLookup,
                        "_create_embedding_kernel")
    with pytest.raises(_compat.TorchRecInternalsChanged,
                       match=r"GroupedPooledEmbeddingsLookup\._create_embedding_kernel.*"
                             r"TorchRec 1\.8\.x; this is TorchRec " + torchrec.__version__):
        recheck()


def test_changed_parameters_are_caught(recheck, monkeypatch):
    monkeypatch.setattr(embeddingbag, "_apply_mean_pooling", lambda kt, divisor, scale: kt)
    with pytest.raises(_compat.TorchRecInternalsChanged, match="_apply_mean_pooling"):
        recheck()


def test_private_member():
    class Lookup:
        _emb_modules = [1]

    assert _compat.private(Lookup(), "_emb_modules") == [1]
    with pytest.raises(_compat.TorchRecInternalsChanged,
                       match=r"Lookup has no member '_gone'.*TorchRec 1\.8"):
        _compat.private(Lookup(), "_gone")


def test_sharder_import_fails_clearly_fuse_embeddings_still_works():
    """In a fresh process whose TorchRec lacks an internal: ipex_train.torchrec
    imports, fuse_embeddings is there, the first use of the sharders raises."""
    code = (
        "import torchrec.distributed.embeddingbag as e\n"
        "del e.ShardedEmbeddingBagCollection._create_lookups\n"
        "import ipex_train.torchrec as itr\n"
        "assert callable(itr.fuse_embeddings)\n"
        "try:\n"
        "    itr.sharders()\n"
        "except ImportError as err:\n"
        "    print('ERR', err)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ERR ipex_train.torchrec sharder: torchrec.distributed.embeddingbag." \
           "ShardedEmbeddingBagCollection._create_lookups" in out.stdout, out.stdout
    assert "TorchRec 1.8.x" in out.stdout, out.stdout

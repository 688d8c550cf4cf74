import pytest

import ipex_train.nn.functional as ipf


@pytest.fixture(params=["onednn", "torch"])
def gemm(request, monkeypatch):
    """The fp32 GEMMs of linear_relu and low_rank_cross: oneDNN's linear (the
    default where torch has it) or torch's own (what IPEX_TRAIN_GEMM=torch
    selects at import)."""
    if request.param == "onednn":
        if ipf._onednn_linear() is None:
            pytest.skip("torch without oneDNN")
        monkeypatch.setattr(ipf, "_ONEDNN_LINEAR", ipf._onednn_linear())
    else:
        monkeypatch.setattr(ipf, "_ONEDNN_LINEAR", None)
    return request.param

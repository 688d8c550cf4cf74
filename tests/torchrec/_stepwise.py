"""The step-by-step check shared by the DLRM and DLRM_DCN tests: a fused
model and its untouched TorchRec twin, each with its own optimizer, give the
same losses every step and the same tables and dense weights at the end."""
import pytest
import torch

from torchrec import EmbeddingBagCollection, EmbeddingBagConfig

import ipex_train.torchrec as itr


def make_ebc(rows, dim):
    """Table t{i} of rows[i] rows and width `dim` reads feature f{i}."""
    return EmbeddingBagCollection(tables=[
        EmbeddingBagConfig(name=f"t{i}", num_embeddings=r, embedding_dim=dim,
                           feature_names=[f"f{i}"]) for i, r in enumerate(rows)])


def bce(model, dense, kjt, labels):
    return torch.nn.functional.binary_cross_entropy_with_logits(
        model(dense, kjt).squeeze(1).float(), labels)


def check_matches_torchrec(ref, ref_opt, ours, opt, batches):
    """Trains both on `batches` (dense, kjt, labels); returns the names of ref's
    dense parameters (all compared)."""
    for step, batch in enumerate(batches):
        losses = []
        for model, o in ((ref, ref_opt), (ours, opt)):
            loss = bce(model, *batch)
            o.zero_grad()
            loss.backward()
            o.step()
            losses.append(loss.item())
        assert losses[1] == pytest.approx(losses[0], rel=1e-5), step
    got = ours.sparse_arch.embedding_bag_collection.table_weights()
    for name, bag in ref.sparse_arch.embedding_bag_collection.embedding_bags.items():
        torch.testing.assert_close(got[name], bag.weight.detach(), rtol=1e-5, atol=1e-6)
    ref_dense = [(n, p) for n, p in ref.named_parameters() if "sparse_arch" not in n]
    ours_dense = list(itr.dense_parameters(ours))
    assert len(ref_dense) == len(ours_dense)
    for (n, a), b in zip(ref_dense, ours_dense):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=lambda m: f"{n}: {m}")
    return [n for n, _ in ref_dense]

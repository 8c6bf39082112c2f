"""Encoder tests: batched forward equals per-graph forward; embeddings do not depend on node order."""

import pytest
import torch

from engine.rl.gnn import GroupFeatureEncoder, MultiStageData, MultiStageGNN, build_encoder
from engine.rl.policy import batch_states
from engine.rl.synthetic import chain_state


def _states():
    return [chain_state([1.0, 0.8, 0.6]), chain_state([0.5, 0.9, 0.7, 0.3, 1.0]), chain_state([0.4, 0.4])]


@pytest.mark.parametrize("kind", ["gnn", "features"])
def test_batched_equals_per_graph(kind):
    torch.manual_seed(0)
    enc = build_encoder(kind, dim=16)
    states = _states()
    out = enc(batch_states(states))
    assert out.graph_embedding.shape == (3, 16)
    assert out.group_embeddings.shape == (10, 16)
    assert out.group_graph.tolist() == [0] * 3 + [1] * 5 + [2] * 2
    offset = 0
    for i, s in enumerate(states):
        single = enc(batch_states([s]))
        torch.testing.assert_close(out.graph_embedding[i], single.graph_embedding[0])
        g = single.group_embeddings.size(0)
        torch.testing.assert_close(out.group_embeddings[offset : offset + g], single.group_embeddings)
        offset += g
    # the released code's bug: distinct graphs must give distinct embeddings
    assert not torch.allclose(out.graph_embedding[0], out.graph_embedding[1])


def _permute(s: MultiStageData, seed: int) -> MultiStageData:
    g = torch.Generator().manual_seed(seed)
    n, m = s.x.size(0), s.motif_x.size(0)
    perm = torch.randperm(n, generator=g)  # new position -> old node
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(n)
    mperm = torch.randperm(m, generator=g)
    minv = torch.empty_like(mperm)
    minv[mperm] = torch.arange(m)
    eperm = torch.randperm(s.edge_index.size(1), generator=g)
    einv = torch.empty_like(eperm)
    einv[eperm] = torch.arange(eperm.numel())
    return MultiStageData(
        x=s.x[perm],
        edge_index=inv[s.edge_index[:, eperm]],
        edge_attr=s.edge_attr[eperm],
        conv_edge=einv[s.conv_edge],
        conv_edge_motif=s.conv_edge_motif,
        motif_x=s.motif_x[mperm],
        motif_edge_index=minv[s.motif_edge_index],
        motif_batch=s.motif_batch[mperm],
        motif_graph=s.motif_graph,
        group_node=inv[s.group_node],
        group_member=s.group_member,
        group_graph=s.group_graph,
        group_x=s.group_x,
    )


def test_embedding_invariant_to_node_order():
    torch.manual_seed(0)
    enc = MultiStageGNN(dim=16)
    s = chain_state([0.9, 0.5, 0.7, 0.3])
    a = enc(batch_states([s]))
    b = enc(batch_states([_permute(s, 1)]))
    torch.testing.assert_close(a.graph_embedding, b.graph_embedding)
    torch.testing.assert_close(a.group_embeddings, b.group_embeddings)


def test_embedding_reflects_state():
    torch.manual_seed(0)
    enc = MultiStageGNN(dim=16)
    a = enc(batch_states([chain_state([1.0, 1.0, 1.0])]))
    b = enc(batch_states([chain_state([1.0, 0.3, 1.0])]))
    assert not torch.allclose(a.group_embeddings, b.group_embeddings)
    # deterministic: no random features
    c = enc(batch_states([chain_state([1.0, 1.0, 1.0])]))
    torch.testing.assert_close(a.graph_embedding, c.graph_embedding)


def test_unknown_encoder_kind():
    with pytest.raises(ValueError, match="'mlp' is unknown"):
        build_encoder("mlp")
    assert isinstance(build_encoder("features"), GroupFeatureEncoder)

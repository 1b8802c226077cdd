"""BatchFormer: two streams, batch-wise attention from its definition, eval identity."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sslkit.errors import ConfigError, UserError
from sslkit.models.batchformer import BatchFormer


def _bf(dim=16, heads=4, dropout=0.0, **kw) -> BatchFormer:
    torch.manual_seed(0)
    return BatchFormer(dim, heads=heads, dropout=dropout, **kw).train()


def reference_layer(layer, x: torch.Tensor) -> torch.Tensor:
    """Post-norm encoder layer (Vaswani et al.) written out; x (B, D) is ONE sequence.

    y = LN1(x + MHA(x)); out = LN2(y + W2 relu(W1 y + b1) + b2); MHA with h heads:
    softmax(Q_h K_h^T / sqrt(D/h)) V_h, concatenated, then the output projection.
    """
    attn = layer.self_attn
    d, h = x.shape[1], attn.num_heads
    wq, wk, wv = attn.in_proj_weight.chunk(3)
    bq, bk, bv = attn.in_proj_bias.chunk(3)
    q, k, v = x @ wq.T + bq, x @ wk.T + bk, x @ wv.T + bv
    heads = []
    for i in range(h):
        sl = slice(i * d // h, (i + 1) * d // h)
        w = torch.softmax(q[:, sl] @ k[:, sl].T / math.sqrt(d // h), dim=1)  # (B, B)
        heads.append(w @ v[:, sl])
    a = torch.cat(heads, dim=1) @ attn.out_proj.weight.T + attn.out_proj.bias
    y = F.layer_norm(x + a, (d,), layer.norm1.weight, layer.norm1.bias, layer.norm1.eps)
    f = layer.linear2(torch.relu(layer.linear1(y)))
    return F.layer_norm(y + f, (d,), layer.norm2.weight, layer.norm2.bias, layer.norm2.eps)


def test_train_forward_is_plain_then_encoded_and_matches_definition():
    bf = _bf(dim=16, heads=4)
    h = torch.randn(6, 16)
    out = bf(h)
    assert out.shape == (12, 16)
    assert torch.equal(out[:6], h)  # plain stream first, untouched
    ref = reference_layer(bf.encoder.layers[0], h)
    torch.testing.assert_close(out[6:], ref, rtol=1e-5, atol=1e-5)


def test_two_layers_compose():
    bf = _bf(dim=8, heads=2, layers=2)
    h = torch.randn(5, 8)
    ref = reference_layer(bf.encoder.layers[1], reference_layer(bf.encoder.layers[0], h))
    torch.testing.assert_close(bf(h)[5:], ref, rtol=1e-5, atol=1e-5)


def test_defaults_follow_the_authors():
    bf = BatchFormer(32)
    layer = bf.encoder.layers[0]
    assert len(bf.encoder.layers) == 1
    assert layer.self_attn.num_heads == 4
    assert layer.linear1.out_features == 32  # ffn_dim None -> dim
    assert layer.dropout.p == 0.5
    assert layer.norm_first is False and layer.activation is F.relu  # post-norm, ReLU
    assert BatchFormer(32, ffn_dim=64).encoder.layers[0].linear1.out_features == 64


def test_permutation_equivariant():
    bf = _bf()
    h = torch.randn(7, 16)
    perm = torch.randperm(7)
    torch.testing.assert_close(bf.encode(h[perm]), bf.encode(h)[perm], rtol=1e-5, atol=1e-6)


def test_mixes_samples():
    bf = _bf()
    h = torch.randn(5, 16)
    h2 = h.clone()
    h2[0] += torch.randn(16)
    a, b = bf.encode(h), bf.encode(h2)
    for i in range(1, 5):  # every other sample's encoding changes
        assert not torch.allclose(a[i], b[i], atol=1e-6)


def test_eval_is_identity():
    bf = _bf(dropout=0.5).eval()
    h = torch.randn(4, 16)
    assert bf(h) is h


def test_dropout_active_in_training():
    bf = _bf(dropout=0.5)
    h = torch.randn(8, 16)
    torch.manual_seed(1)
    a = bf(h)
    torch.manual_seed(2)
    b = bf(h)
    assert not torch.allclose(a[8:], b[8:])
    assert torch.equal(a[:8], b[:8])


def test_gradients_reach_every_parameter():
    bf = _bf(dropout=0.5, layers=2)
    h = torch.randn(8, 16, requires_grad=True)
    out = bf(h)
    (out[8:] * torch.randn_like(out[8:])).sum().backward()
    for name, p in bf.named_parameters():
        assert p.requires_grad
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert h.grad is not None


def test_global_scope_single_process_is_local():
    bf = _bf()
    h = torch.randn(4, 16)
    torch.testing.assert_close(bf(h, scope="global"), bf(h))


@pytest.mark.parametrize("dim,heads,fix", [(10, 4, 2), (18, 4, 3), (7, 2, 1)])
def test_heads_must_divide_dim(dim, heads, fix):
    with pytest.raises(ConfigError) as e:
        BatchFormer(dim, heads=heads)
    msg = str(e.value)
    assert isinstance(e.value, UserError) and "\n" not in msg
    assert f"batchformer.heads={heads}" in msg and str(dim) in msg
    assert f"batchformer.heads={fix}" in msg and dim % fix == 0

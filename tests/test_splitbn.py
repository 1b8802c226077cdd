"""Split BatchNorm (one-process shuffle-BN for MoCo-v2) against a per-group reference."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sslkit.models.splitbn import SplitBatchNorm1d, SplitBatchNorm2d, convert_split_bn
from sslkit.methods.resolve import resolved


def _reference(x: torch.Tensor, weight, bias, splits: int, eps: float) -> torch.Tensor:
    """Normalise each group {n : n mod splits == s} with its own biased mean/var."""
    out = torch.empty_like(x)
    dims = [0] + list(range(2, x.dim()))
    shape = [1, -1] + [1] * (x.dim() - 2)
    for s in range(splits):
        g = x[s::splits]
        mean = g.mean(dim=dims, keepdim=True)
        var = g.var(dim=dims, unbiased=False, keepdim=True)
        out[s::splits] = (g - mean) / torch.sqrt(var + eps) * weight.view(shape) + bias.view(shape)
    return out


@pytest.mark.parametrize("cls, shape", [(SplitBatchNorm2d, (8, 3, 5, 5)),
                                        (SplitBatchNorm1d, (12, 6))])
def test_training_normalises_each_group(cls, shape):
    torch.manual_seed(0)
    c, splits = shape[1], 4
    bn = cls(c, splits)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    x = torch.randn(*shape) * 3 + 1
    x[1::splits] += 5  # one group with a very different mean
    out = bn(x)
    torch.testing.assert_close(out, _reference(x, bn.weight, bn.bias, splits, bn.eps),
                               rtol=1e-4, atol=1e-4)
    # running stats move towards the mean of the groups' statistics (momentum 0.1)
    dims = [0] + list(range(2, x.dim()))
    group_means = torch.stack([x[s::splits].mean(dim=dims) for s in range(splits)])
    torch.testing.assert_close(bn.running_mean, 0.1 * group_means.mean(dim=0),
                               rtol=1e-4, atol=1e-5)
    assert int(bn.num_batches_tracked) == 1


def test_eval_is_plain_batchnorm_and_state_dict_names_match():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                        nn.LazyLinear(5), nn.BatchNorm1d(5))
    net(torch.randn(4, 3, 6, 6))
    net.train()
    for _ in range(3):
        net(torch.randn(8, 3, 6, 6))
    ref = copy.deepcopy(net).eval()
    split = convert_split_bn(net, 4).eval()
    assert isinstance(split[1], SplitBatchNorm2d) and isinstance(split[5], SplitBatchNorm1d)
    assert split.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(6, 3, 6, 6)  # any batch size in eval
    torch.testing.assert_close(split(x), ref(x))
    ref.load_state_dict(split.state_dict(), strict=True)


def test_one_split_is_batchnorm():
    torch.manual_seed(0)
    bn, ref = SplitBatchNorm2d(3, 1), nn.BatchNorm2d(3)
    x = torch.randn(6, 3, 4, 4)
    torch.testing.assert_close(bn(x), ref(x))
    torch.testing.assert_close(bn.running_var, ref.running_var)


def test_batch_not_divisible_is_refused():
    with pytest.raises(ValueError, match="not divisible"):
        SplitBatchNorm2d(3, 4)(torch.randn(6, 3, 2, 2))


def _tiny_v2(splits: int):
    from sslkit import config
    from sslkit.methods import MoCoV2
    from sslkit.models.backbones import build_backbone

    torch.manual_seed(0)
    cfg = resolved(config.build({}, ["method.queue_size=64", "method.proj_hidden_dim=16",
                                     "method.proj_dim=8", f"method.bn_splits={splits}",
                                     "train.batch_size=8"]))
    backbone, dim = build_backbone("resnet18", cifar_stem=True, width=4)
    return MoCoV2(backbone, dim, cfg.method, cfg.batchformer)


def test_mocov2_one_process_shuffles_keys_over_split_bn_groups():
    model = _tiny_v2(4).train()
    for enc in (model.backbone, model.momentum_backbone):
        kinds = {type(m) for m in enc.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
        assert kinds == {SplitBatchNorm2d}
    x = torch.randn(8, 3, 12, 12)
    ref = copy.deepcopy(model)
    torch.manual_seed(5)
    keys = model._keys(x)[0]  # the one key stream (no BatchFormer)
    torch.manual_seed(5)
    perm = torch.randperm(8)
    with torch.no_grad():
        shuffled = ref.momentum_projector(ref.momentum_backbone(x[perm]))
    want = torch.nn.functional.normalize(shuffled[torch.argsort(perm)], dim=1)
    torch.testing.assert_close(keys, want)
    # the shuffle matters: unshuffled split-BN keys differ (other group statistics)
    with torch.no_grad():
        plain = torch.nn.functional.normalize(
            copy.deepcopy(ref).momentum_projector(ref.momentum_backbone(x)), dim=1)
    assert not torch.allclose(keys, plain, atol=1e-3)


def test_mocov2_bn_splits_one_keeps_plain_batchnorm():
    model = _tiny_v2(1)
    assert not any(isinstance(m, SplitBatchNorm2d) for m in model.modules())

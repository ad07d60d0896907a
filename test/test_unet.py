"""The 1D conditional U-Net: shapes across horizons and batch sizes, horizon and config errors, conditioning."""
import pytest
import torch

from class_ros.errors import ClassRosError
from class_ros.policy.unet import ConditionalUnet1D, SeqConv1d, SinusoidalStepEmbedding, UNetConfig

TINY = UNetConfig(down_dims=[16, 32, 64], kernel_size=3, n_groups=4, step_embed_dim=16)


@pytest.mark.parametrize("horizon", [4, 8, 12, 16, 32])
@pytest.mark.parametrize("batch", [1, 3])
def test_output_shape_matches_input(horizon, batch):
    net = ConditionalUnet1D(action_dim=7, cond_dim=10, config=TINY)
    x = torch.randn(batch, horizon, 7)
    out = net(x, torch.randint(0, 16, (batch,)), torch.randn(batch, 10))
    assert out.shape == (batch, horizon, 7)
    assert torch.isfinite(out).all()


def test_scalar_timestep_equals_per_sample_timesteps():
    torch.manual_seed(0)
    net = ConditionalUnet1D(action_dim=3, cond_dim=5, config=TINY).eval()
    x, c = torch.randn(2, 8, 3), torch.randn(2, 5)
    torch.testing.assert_close(net(x, 7, c), net(x, torch.tensor([7, 7]), c))


@pytest.mark.parametrize("horizon", [1, 2, 6, 10, 18])
def test_bad_horizon_is_a_clear_error(horizon):
    net = ConditionalUnet1D(action_dim=2, cond_dim=4, config=TINY)  # 3 levels: multiple of 4
    with pytest.raises(ClassRosError, match="multiple of 4"):
        net(torch.randn(1, horizon, 2), 0, torch.randn(1, 4))


def test_single_level_accepts_any_horizon():
    net = ConditionalUnet1D(action_dim=2, cond_dim=4, config=UNetConfig(down_dims=[8], n_groups=4,
                                                                         kernel_size=3, step_embed_dim=8))
    assert net(torch.randn(2, 7, 2), 0, torch.randn(2, 4)).shape == (2, 7, 2)


@pytest.mark.parametrize("kwargs, match", [
    ({"down_dims": [12, 24], "n_groups": 8}, "must divide"),
    ({"kernel_size": 4}, "odd"),
    ({"down_dims": []}, "non-empty"),
    ({"step_embed_dim": 7}, "even"),
])
def test_bad_config_is_a_clear_error(kwargs, match):
    with pytest.raises(ClassRosError, match=match):
        UNetConfig(**kwargs)


def test_defaults_are_method_md_values():
    cfg = UNetConfig()
    assert (cfg.down_dims, cfg.kernel_size, cfg.n_groups, cfg.step_embed_dim) == ([256, 512, 1024], 5, 8, 256)
    assert cfg.horizon_multiple == 4
    assert sum(d for d in UNetConfig.cpu().down_dims) < sum(cfg.down_dims)


def test_output_depends_on_condition_and_step():
    torch.manual_seed(0)
    net = ConditionalUnet1D(action_dim=3, cond_dim=5, config=TINY).eval()
    x, c = torch.randn(1, 8, 3), torch.randn(1, 5)
    base = net(x, 3, c)
    assert (net(x, 3, c + 1.0) - base).abs().max() > 1e-3
    assert (net(x, 12, c) - base).abs().max() > 1e-3


def test_step_embedding_distinguishes_steps():
    emb = SinusoidalStepEmbedding(32)(torch.arange(16))
    assert emb.shape == (16, 32)
    dist = torch.cdist(emb, emb) + torch.eye(16) * 1e3
    assert dist.min() > 0.1  # every diffusion step gets its own code


def test_gradients_reach_every_parameter():
    net = ConditionalUnet1D(action_dim=3, cond_dim=5, config=TINY)
    net(torch.randn(2, 8, 3), torch.tensor([1, 2]), torch.randn(2, 5)).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


@pytest.mark.parametrize("kernel,stride,padding", [(5, 1, 2), (3, 2, 1), (1, 1, 0)])
@pytest.mark.parametrize("batch,length", [(1, 4), (3, 16)])
def test_unet_gemm_convolution_equals_conv1d(kernel, stride, padding, batch, length):
    torch.manual_seed(0)
    conv = SeqConv1d(6, 10, kernel, stride=stride, padding=padding)
    x = torch.randn(batch, 6, length)
    library = conv(x)  # autograd on: the library convolution
    with torch.no_grad():
        gemm = conv(x)  # inference: the matrix-product form
    torch.testing.assert_close(gemm, library.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gemm, torch.nn.functional.conv1d(x, conv.weight, conv.bias, stride, padding),
                               atol=1e-5, rtol=1e-5)


def test_whole_unet_inference_equals_training_forward():
    torch.manual_seed(0)
    net = ConditionalUnet1D(action_dim=7, cond_dim=10, config=TINY).eval()
    x, t, c = torch.randn(2, 16, 7), torch.tensor([3, 9]), torch.randn(2, 10)
    with torch.no_grad():
        inference = net(x, t, c)
    torch.testing.assert_close(inference, net(x, t, c).detach(), atol=1e-5, rtol=1e-5)

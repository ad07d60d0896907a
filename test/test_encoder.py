"""Encoder parts: augmentation, spatial softmax, GroupNorm backbones, multi-view, proprio, init weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from class_ros.encoder.augment import IMAGENET_MEAN, IMAGENET_STD, ImageAugment
from class_ros.encoder.backbones import SpatialSoftmax, VisionBackbone
from class_ros.encoder.config import EncoderConfig
from class_ros.encoder.model import ObservationEncoder, load_init_weights
from class_ros.errors import ClassRosError


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, c, c) normalised -> (B, c, c, 3) on the 0-255 scale."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x * std + mean) * 255).permute(0, 2, 3, 1)


def test_eval_is_the_centre_crop_and_train_crops_are_real_crops():
    torch.manual_seed(0)
    imgs = torch.randint(0, 256, (6, 12, 10, 3), dtype=torch.uint8)
    aug = ImageAugment(crop_size=8, noise_std=0.0)
    centre = denormalize(aug(imgs, train=False))
    torch.testing.assert_close(centre, imgs[:, 2:10, 1:9].float(), atol=1e-3, rtol=0)
    crops = denormalize(aug(imgs, train=True))
    offsets = set()
    for b in range(6):
        hits = [(y, x) for y in range(5) for x in range(3)
                if torch.allclose(crops[b], imgs[b, y:y + 8, x:x + 8].float(), atol=1e-3)]
        assert hits, f"sample {b} is not a crop of its image"
        offsets.add(hits[0])
    assert len(offsets) > 1  # one random offset per sample, not one per batch


def test_noise_has_the_configured_scale():
    imgs = torch.full((32, 20, 20, 3), 128, dtype=torch.uint8)
    noisy = denormalize(ImageAugment(crop_size=20, noise_std=5.0)(imgs, train=True))
    assert float((noisy - 128).std()) == pytest.approx(5.0, rel=0.05)
    clean = denormalize(ImageAugment(crop_size=20, noise_std=5.0)(imgs, train=False))
    assert float((clean - 128).abs().max()) < 1e-3  # no noise at evaluation


def test_spatial_softmax_finds_the_peak():
    pool = SpatialSoftmax(1, 1, 5, 5)
    with torch.no_grad():
        pool.keypoints.weight.fill_(1.0)
        pool.keypoints.bias.zero_()
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 4, 0] = 100.0  # bottom-left corner
    torch.testing.assert_close(pool(x), torch.tensor([[-1.0, 1.0]]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["small", "resnet18"])
def test_backbones_use_groupnorm_only(kind):
    net = VisionBackbone(kind, crop_size=32, num_keypoints=8, feature_dim=16)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert not norms and any(isinstance(m, torch.nn.GroupNorm) for m in net.modules())
    # GroupNorm makes each sample's feature independent of the rest of the batch.
    x = torch.randn(4, 3, 32, 32)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x)[:1], net(x[:1]), atol=1e-5, rtol=1e-4)


def test_multi_view_shared_and_separate_backbones_and_proprio():
    from class_ros.data.normalizer import MinMaxNormalizer

    base = dict(image_keys=["left", "right"], proprio_keys=["q"], proprio_dims=[3], image_size=[24, 24],
                crop_size=20, num_keypoints=4, feature_dim=8, small_width=8)
    separate = ObservationEncoder(EncoderConfig(**base))
    shared = ObservationEncoder(EncoderConfig(**base, shared_backbone=True))
    assert set(separate.backbones) == {"left", "right"} and set(shared.backbones) == {"shared"}
    n_sep = sum(p.numel() for p in separate.parameters())
    assert n_sep == 2 * sum(p.numel() for p in shared.parameters())
    norm = MinMaxNormalizer(np.array([0.0, -1.0, 5.0]), np.array([2.0, 1.0, 5.0]))
    separate.set_proprio_normalizers({"q": norm})
    q = torch.tensor([[1.0, 0.5, 5.0], [2.0, -1.0, 5.0]])
    obs = {"left": torch.randint(0, 256, (2, 24, 24, 3), dtype=torch.uint8),
           "right": torch.randint(0, 256, (2, 24, 24, 3), dtype=torch.uint8), "q": q}
    separate.eval()
    out = separate(obs)
    assert out.shape == (2, separate.out_dim) == (2, 2 * 8 + 3)
    torch.testing.assert_close(out[:, 16:], torch.as_tensor(norm.normalize(q.numpy()), dtype=torch.float32))
    torch.testing.assert_close(out[:, :16], separate.image_features(obs))
    # The proprio normaliser is part of the state dict, so it travels with the weights.
    fresh = ObservationEncoder(EncoderConfig(**base))
    fresh.load_state_dict(separate.state_dict())
    fresh.eval()
    torch.testing.assert_close(fresh(obs), out)
    with pytest.raises(ClassRosError, match="no camera 'right'"):
        separate.image_features({"left": obs["left"]})
    with pytest.raises(ClassRosError, match="trained on"):
        separate.image_features({"left": obs["left"][:, :20], "right": obs["right"]})


def test_config_validation_and_dataset_fill(tmp_path):
    from latent_dataset import make_latent_dataset

    with pytest.raises(ClassRosError, match="backbone"):
        EncoderConfig(backbone="vit")
    with pytest.raises(ClassRosError, match="unknown encoder config keys"):
        EncoderConfig.from_dict({"widht": 3})
    store = make_latent_dataset(tmp_path / "d", n_episodes=1, length=3, size=16)
    cfg = EncoderConfig().for_dataset(store.meta)
    assert (cfg.image_keys, cfg.proprio_keys, cfg.proprio_dims, cfg.image_size, cfg.crop_size) == \
        (["cam"], ["state"], [2], [16, 16], 16)
    with pytest.raises(ClassRosError, match="needs observation 'wrist'"):
        EncoderConfig(image_keys=["wrist"]).for_dataset(store.meta)


def test_init_weights_from_a_torchvision_keyed_file(tmp_path):
    from safetensors.torch import save_file
    from torchvision.models import resnet18

    torch.manual_seed(1)
    reference = resnet18(weights=None)  # BatchNorm keys as ImageNet checkpoints have them
    sd = {k: v for k, v in reference.state_dict().items()}
    save_file(sd, str(tmp_path / "imagenet.safetensors"))
    enc = ObservationEncoder(EncoderConfig(backbone="resnet18", image_keys=["cam"], image_size=[32, 32],
                                           crop_size=32))
    n = load_init_weights(enc, tmp_path / "imagenet.safetensors")
    net = enc.backbones["cam"].trunk.net
    assert n > 50
    assert torch.equal(net.conv1.weight, sd["conv1.weight"]) and torch.equal(net.bn1.weight, sd["bn1.weight"])
    assert torch.equal(net.layer4[1].conv2.weight, sd["layer4.1.conv2.weight"])
    save_file({"unrelated": torch.zeros(3)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ClassRosError, match="no tensor"):
        load_init_weights(enc, tmp_path / "bad.safetensors")
    with pytest.raises(ClassRosError, match="does not exist"):
        load_init_weights(enc, tmp_path / "missing.safetensors")


@pytest.mark.gpu
def test_cuda_forward_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    enc = ObservationEncoder(EncoderConfig(image_keys=["cam"], image_size=[32, 32], crop_size=28)).eval()
    imgs = {"cam": torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)}
    with torch.no_grad():
        cpu = enc(imgs)
        gpu = enc.cuda().to(memory_format=torch.channels_last)({"cam": imgs["cam"].cuda()}).cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-3, rtol=1e-3)


@pytest.mark.gpu
def test_cuda_amp_training_step_lowers_the_loss():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from class_ros.encoder.lars import LARS
    from class_ros.encoder.loss import soft_infonce

    torch.manual_seed(0)
    enc = ObservationEncoder(EncoderConfig(backbone="resnet18", image_keys=["cam"], image_size=[96, 96],
                                           crop_size=84)).cuda().to(memory_format=torch.channels_last)
    opt = LARS(enc.parameters(), lr=0.4)
    imgs = {"cam": torch.randint(0, 256, (32, 96, 96, 3), dtype=torch.uint8, device="cuda")}
    w = torch.zeros(32, 32, device="cuda")
    w[torch.arange(0, 32, 2), torch.arange(1, 32, 2)] = 1.0  # pairs (0,1), (2,3), ...
    w = w + w.T
    losses = []
    for _ in range(20):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            z = enc.image_features(imgs, train=False)  # fixed views: the loss can only fall by learning
        loss = soft_infonce(z, w, 0.05)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]

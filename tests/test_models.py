"""Hash head, in-package ResNet-18 (vs torchvision's layout) and the image hashing net."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hashindex.core.codes import binarize  # noqa: E402
from hashindex.core.errors import InputError  # noqa: E402
from hashindex.serving.hashers import ITQHasher  # noqa: E402
from hashindex.training.models import HashHead, ImageHashNet, build_model, model_spec  # noqa: E402
from hashindex.training.models.resnet import resnet18  # noqa: E402


def _torchvision_resnet18_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of torchvision.models.resnet18().state_dict(), written out from its source.

    torchvision: conv1 7x7/2 (3->64, no bias), bn1, maxpool, layer1..4 of two BasicBlocks
    (conv3x3 -> bn -> relu -> conv3x3 -> bn, 1x1 conv + bn ``downsample`` on the first block of
    layer2..4), avgpool, fc 512 -> 1000. BatchNorm has weight, bias, running_mean,
    running_var and a scalar num_batches_tracked.
    """
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (c,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    shapes["conv1.weight"] = (64, 3, 7, 7)
    bn("bn1", 64)
    cin = 64
    for layer, cout in zip((1, 2, 3, 4), (64, 128, 256, 512)):
        for block in (0, 1):
            p = f"layer{layer}.{block}"
            shapes[f"{p}.conv1.weight"] = (cout, cin, 3, 3)
            bn(f"{p}.bn1", cout)
            shapes[f"{p}.conv2.weight"] = (cout, cout, 3, 3)
            bn(f"{p}.bn2", cout)
            if block == 0 and layer > 1:
                shapes[f"{p}.downsample.0.weight"] = (cout, cin, 1, 1)
                bn(f"{p}.downsample.1", cout)
            cin = cout
    shapes["fc.weight"] = (1000, 512)
    shapes["fc.bias"] = (1000,)
    return shapes


def test_resnet18_state_dict_matches_torchvision_layout():
    model = resnet18()
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = _torchvision_resnet18_shapes()
    assert len(expected) == 122
    assert got == expected
    # the published parameter count of torchvision's resnet18 (1000 classes)
    assert sum(p.numel() for p in model.parameters()) == 11_689_512
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 1000)


def test_image_hash_net_outputs_and_pretrained_loading(tmp_path):
    torch.manual_seed(0)
    donor = resnet18()
    with torch.no_grad():
        for p in donor.parameters():
            p.add_(0.01)
    torch.save(donor.state_dict(), tmp_path / "r18.pth")
    net = ImageHashNet.create(48, pretrained_path=tmp_path / "r18.pth").eval()
    for k, v in donor.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(net.backbone.state_dict()[k], v), k
    x = torch.randn(3, 3, 112, 112)
    with torch.no_grad():
        h = net(x)
        f = net.features(x)
    assert h.shape == (3, 48) and net.bits == 48 and net.in_dim == 512
    assert h.abs().max() <= 1
    torch.testing.assert_close(f.norm(dim=1), torch.ones(3))
    spec = net.input_spec
    assert spec.name == "images" and spec.sample_shape == (3, 112, 112)
    assert spec.preprocessing.channel_order == "BGR"
    rebuilt = build_model(model_spec(net))
    assert rebuilt.config == net.config

    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(InputError, match="not a ResNet-18"):
        ImageHashNet.create(48, pretrained_path=tmp_path / "bad.pth")
    torch.save({"conv1.weight": donor.conv1.weight}, tmp_path / "partial.pth")
    with pytest.raises(InputError, match="missing"):
        ImageHashNet.create(48, pretrained_path=tmp_path / "partial.pth")


@pytest.mark.parametrize("hidden", [(), (32,), (64, 32)])
def test_hash_head_range_bits_and_rebuild(hidden):
    torch.manual_seed(0)
    head = HashHead.create(16, 24, hidden)
    x = torch.randn(50, 16) * 100  # large inputs saturate tanh but stay in [-1, 1]
    h = head(x)
    assert h.shape == (50, 24) and head.bits == 24 and head.in_dim == 16
    assert head.input_spec.name == "features" and head.input_spec.sample_shape == (16,)
    assert h.abs().max() <= 1 and (h.abs() > 0.99).any()
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in head.modules())
    assert n_linear == len(hidden) + 1
    spec = model_spec(head)
    assert spec["config"]["hidden"] == list(hidden)
    rebuilt = build_model(spec)
    rebuilt.load_state_dict(head.state_dict())
    assert torch.equal(rebuilt(x), h)


def test_hash_head_from_linear_reproduces_itq_codes():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 32)).astype(np.float32)
    itq = ITQHasher(32, 16).fit(x)
    head = HashHead.from_linear(itq.weight, itq.bias, scale=3.0)
    with torch.no_grad():
        h = head(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(binarize(h), itq.encode(x))
    np.testing.assert_allclose(h, np.tanh(3.0 * itq.project(x)), atol=1e-5)
    with pytest.raises(InputError):
        HashHead.from_linear(itq.weight, itq.bias, scale=-1.0)
    with pytest.raises(InputError):
        HashHead.from_linear(itq.weight, itq.bias[:3])


def test_bad_model_configs():
    with pytest.raises(InputError, match="multiple of 8"):
        HashHead.create(16, 12)
    with pytest.raises(InputError):
        HashHead.create(0, 16)
    with pytest.raises(InputError, match="backbone"):
        ImageHashNet.create(16, backbone="vgg")

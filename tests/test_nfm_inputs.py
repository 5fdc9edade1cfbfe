"""NFM library inputs (issue 12): empty batches give empty outputs (as nn.LSTM and the plain backbones do),
wrong source shapes and bad model arguments are one-line ValueErrors naming the shapes, not a bmm or
broadcast error from deep inside."""
import pytest
import timm
import torch
from torch import nn

from zoo.layers.nfm import NFM, NFMAttention

IMAGE_MODELS = timm.list_models(module="preact_resnet") + timm.list_models(module="small_cnns")
NFM_MODELS = [n for n in IMAGE_MODELS if n.startswith("nfm_") and n.removeprefix("nfm_") in
              ("preactresnet18", "wrn28_2", "sortclevr_cnn", "mnist_convnet")]


def _one_line_error(excinfo, *needles):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)


@pytest.mark.parametrize("share_kv", [True, False])
def test_empty_batch_block_and_runner(share_kv):
    torch.manual_seed(0)
    blk = NFMAttention(6, [5, 7, 4], d_k=4, d_v=3, num_heads=2, top_k=3, gamma_init=0.5)
    h = torch.randn(0, 6, 8, 8, requires_grad=True)
    out, w, slots = blk(h, [torch.randn(0, 5, 16, 16), torch.randn(0, 7, 8, 8), torch.randn(0, 4)],
                        return_weights=True)
    assert out.shape == h.shape and w.shape == (0, 2, 64, 1 + 4 + 1 + 1) and slots == [4, 1, 1]
    out.sum().backward()
    assert h.grad.shape == h.shape
    net = NFM([nn.Conv2d(3, 6, 3, padding=1), nn.Sequential(nn.Conv2d(6, 8, 3, 2, 1), nn.Flatten(1), nn.Linear(8 * 16, 5))],
              [6, 5], in_chans=3, passes=2, share_kv=share_kv)
    for mode in ("train", "eval"):
        getattr(net, mode)()
        tr = net.run(torch.randn(0, 3, 8, 8), return_attention=True)
        assert tr.output.shape == (0, 5) and len(tr.attention) == 3


@pytest.mark.parametrize("name", NFM_MODELS)
def test_empty_batch_models(name):
    m = timm.create_model(name, num_classes=4)
    size = m.pretrained_cfg["input_size"]
    size = (size[0], 16, 16) if size[1:] == (32, 32) else size
    for mode in ("train", "eval"):
        getattr(m, mode)()
        out = m(torch.randn(0, *size))
        assert out.shape == (0, 4)
    out.sum().backward()


def test_wrong_sources_are_one_line_value_errors():
    blk = NFMAttention(6, [5, 7], d_k=4, d_v=3, num_heads=2)
    h = torch.randn(2, 6, 8, 8)
    with pytest.raises(ValueError) as e:
        blk(h, [torch.randn(2, 5, 8, 8), torch.randn(2, 9, 4, 4)])
    _one_line_error(e, "source 1", "(2, 9, 4, 4)", "9 channels", "source_dims[1] = 7")
    with pytest.raises(ValueError) as e:
        blk(h, [torch.randn(3, 5, 8, 8), torch.randn(2, 7, 4, 4)])
    _one_line_error(e, "source 0", "(3, 5, 8, 8)", "batch size 3", "has 2")
    with pytest.raises(ValueError) as e:
        blk(torch.randn(2, 4, 8, 8), [torch.randn(2, 5, 8, 8), torch.randn(2, 7, 4, 4)])
    _one_line_error(e, "(2, 4, 8, 8)", "query_dim=6")
    with pytest.raises(ValueError) as e:
        blk(h, [torch.randn(2, 5, 8, 8)])
    _one_line_error(e, "expected 2 source layers, got 1")
    with pytest.raises(ValueError) as e:
        blk(h, [torch.randn(2, 5, 8, 8), "layer"])
    _one_line_error(e, "source 1 must be a tensor")
    with pytest.raises(ValueError) as e:
        blk(h, [torch.randn(2, 5, 8, 8), torch.randn(2, 7, 4)])
    _one_line_error(e, "1-d", "2-d")
    ext = NFMAttention(6, [5], d_k=4, d_v=3, num_heads=2, project_sources=False)
    with pytest.raises(ValueError) as e:
        ext(h, [torch.randn(2, 13, 4, 4)])
    _one_line_error(e, "(2, 13, 4, 4)", "num_heads * (d_k + d_v) = 14")
    with pytest.raises(ValueError) as e:
        ext(h, [(torch.randn(2, 8, 4, 4), torch.randn(2, 6, 2, 2))])
    _one_line_error(e, "different spatial sizes")


def test_wrong_runner_input_is_a_value_error():
    net = NFM([nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)], [6, 6], in_chans=3)
    with pytest.raises(ValueError) as e:
        net(torch.randn(2, 4, 8, 8))
    _one_line_error(e, "in_chans=3", "(2, 4, 8, 8)")


@pytest.mark.parametrize("name", [n for n in IMAGE_MODELS if "wrn28_10" not in n and "50" not in n and "34" not in n])
@pytest.mark.parametrize("bad", [-3, 2.5, True])
def test_bad_num_classes_is_a_clear_error(name, bad):
    with pytest.raises(ValueError) as e:
        timm.create_model(name, num_classes=bad)
    _one_line_error(e, "num_classes", repr(bad))


def test_bad_in_chans_and_reset_classifier():
    with pytest.raises(ValueError, match="in_chans"):
        timm.create_model("nfm_mnist_convnet", in_chans=0)
    m = timm.create_model("mnist_convnet")
    with pytest.raises(ValueError, match="num_classes"):
        m.reset_classifier(-1)
    with pytest.raises(ValueError, match="widths"):
        timm.create_model("mnist_convnet", widths=())

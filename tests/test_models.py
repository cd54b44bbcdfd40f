import pytest
import torch

from sws import ConfigError, build_model
from sws.method.surface import select_parameters


@pytest.mark.parametrize("name, params, weights", [
    ("tutorial-conv", 642_460, None), ("lenet-300-100", 266_610, 266_200),
    ("lenet-5-caffe", 431_080, 430_500)])
def test_parameter_counts(name, params, weights):
    model = build_model(name)
    assert sum(p.numel() for p in model.parameters()) == params
    if weights:
        assert sum(p.numel() for p in select_parameters(model, cover="weights").values()) == weights
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_lenet5_caffe_has_no_relu_after_convolutions():
    kinds = [type(m).__name__ for m in build_model("lenet-5-caffe")]
    assert kinds[:5] == ["InputNorm", "Conv2d", "MaxPool2d", "Conv2d", "MaxPool2d"]


def test_standardize_lives_in_the_model_and_unknown_names_fail():
    m = build_model("lenet-300-100", "standardize")
    assert m[0].mean.item() == pytest.approx(0.1307) and "0.mean" in m.state_dict()
    with pytest.raises(ConfigError, match="unknown model"):
        build_model("resnet")


def test_keras_initialisation_option():
    torch.manual_seed(0)
    keras = build_model("lenet-300-100", init="keras")
    default = build_model("lenet-300-100")
    fc1_k, fc1_t = keras[2], default[2]
    assert torch.all(fc1_k.bias == 0)
    bound = (6 / (784 + 300)) ** 0.5  # Glorot-uniform
    assert fc1_k.weight.abs().max() <= bound and fc1_k.weight.abs().max() > 0.9 * bound
    assert fc1_t.weight.abs().max() <= 1 / 28  # PyTorch: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    with pytest.raises(ConfigError, match="unknown init"):
        build_model("lenet-300-100", init="he")

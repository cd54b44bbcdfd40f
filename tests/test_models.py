import pytest
import torch

from sws import ConfigError, build_model
from sws.models import covered_parameters


@pytest.mark.parametrize("name, params, weights", [
    ("tutorial-conv", 642_460, None), ("lenet-300-100", 266_610, 266_200),
    ("lenet-5-caffe", 431_080, 430_500)])
def test_parameter_counts(name, params, weights):
    model = build_model(name)
    assert sum(p.numel() for p in model.parameters()) == params
    if weights:
        assert sum(p.numel() for p in covered_parameters(model, "weights").values()) == weights
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_lenet5_caffe_has_no_relu_after_convolutions():
    kinds = [type(m).__name__ for m in build_model("lenet-5-caffe")]
    assert kinds[:5] == ["InputNorm", "Conv2d", "MaxPool2d", "Conv2d", "MaxPool2d"]


def test_standardize_lives_in_the_model_and_unknown_names_fail():
    m = build_model("lenet-300-100", "standardize")
    assert m[0].mean.item() == pytest.approx(0.1307) and "0.mean" in m.state_dict()
    with pytest.raises(ConfigError, match="unknown model"):
        build_model("resnet")

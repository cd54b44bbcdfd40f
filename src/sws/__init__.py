"""sws: neural network compression by soft weight-sharing (Ullrich, Meeds & Welling, ICLR 2017)."""

from sws.config import PRESETS
from sws.config import PretrainConfig
from sws.config import PriorConfig
from sws.config import QuantizeConfig
from sws.config import RetrainConfig
from sws.config import retrain_config
from sws.errors import CheckpointError
from sws.errors import ConfigError
from sws.errors import DataError
from sws.errors import DivergenceError
from sws.errors import RunDirError
from sws.errors import StorageError
from sws.errors import SwsError
from sws.errors import TrainingInterrupted
from sws.export.onnx import export_onnx
from sws.format.container import FormatError
from sws.method import distributed
from sws.method.compress import BudgetWarning, CompressionReport
from sws.method.compress import compress
from sws.method.evaluate import evaluate
from sws.method.files import load
from sws.method.files import save
from sws.method.loop import fit
from sws.method.loop import pretrain
from sws.method.loop import retrain
from sws.method.postprocess import layer_stats
from sws.method.postprocess import postprocess_
from sws.method.postprocess import quantize_
from sws.method.postprocess import quantize_weights
from sws.method.surface import SoftWeightSharing
from sws.method.surface import select_parameters
from sws.prior import GaussianMixturePrior
from sws.zoo.cifar import load_cifar10
from sws.zoo.mnist import load_mnist
from sws.zoo.models import build_model
from sws.zoo.wrn import build_wrn

__all__ = [
    "PRESETS",
    "PretrainConfig",
    "PriorConfig",
    "QuantizeConfig",
    "RetrainConfig",
    "retrain_config",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DivergenceError",
    "RunDirError",
    "StorageError",
    "SwsError",
    "TrainingInterrupted",
    "export_onnx",
    "FormatError",
    "distributed",
    "CompressionReport",
    "compress",
    "BudgetWarning",
    "evaluate",
    "load",
    "save",
    "fit",
    "pretrain",
    "retrain",
    "layer_stats",
    "postprocess_",
    "quantize_",
    "quantize_weights",
    "SoftWeightSharing",
    "select_parameters",
    "GaussianMixturePrior",
    "load_cifar10",
    "load_mnist",
    "build_model",
    "build_wrn",
]

"""sws: neural network compression by soft weight-sharing (Ullrich, Meeds & Welling, ICLR 2017)."""

from sws.method.compress import CompressionReport
from sws.method.compress import compress
from sws.method.compress import select_parameters
from sws.zoo.cifar import load_cifar10
from sws.config import PRESETS
from sws.config import PretrainConfig
from sws.config import PriorConfig
from sws.config import QuantizeConfig
from sws.config import RetrainConfig
from sws.config import retrain_config
from sws.zoo.mnist import load_mnist
from sws.errors import CheckpointError
from sws.errors import ConfigError
from sws.errors import DataError
from sws.errors import DivergenceError
from sws.errors import RunDirError
from sws.errors import StorageError
from sws.errors import SwsError
from sws.errors import TrainingInterrupted
from sws.format.container import FormatError
from sws.method.files import load
from sws.method.files import save
from sws.zoo.models import build_model
from sws.prior import GaussianMixturePrior
from sws.method.postprocess import quantize_weights
from sws.method.loop import evaluate
from sws.method.loop import pretrain
from sws.method.loop import retrain
from sws.zoo.wrn import build_wrn

__all__ = [
    "CompressionReport",
    "compress",
    "select_parameters",
    "load_cifar10",
    "PRESETS",
    "PretrainConfig",
    "PriorConfig",
    "QuantizeConfig",
    "RetrainConfig",
    "retrain_config",
    "load_mnist",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DivergenceError",
    "RunDirError",
    "StorageError",
    "SwsError",
    "TrainingInterrupted",
    "FormatError",
    "load",
    "save",
    "build_model",
    "GaussianMixturePrior",
    "quantize_weights",
    "evaluate",
    "pretrain",
    "retrain",
    "build_wrn",
]

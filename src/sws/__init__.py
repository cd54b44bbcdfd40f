"""sws: neural network compression by soft weight-sharing (Ullrich, Meeds & Welling, ICLR 2017)."""

from sws.api import CompressionReport
from sws.api import compress
from sws.api import select_parameters
from sws.cifar import load_cifar10
from sws.config import PRESETS
from sws.config import PretrainConfig
from sws.config import PriorConfig
from sws.config import QuantizeConfig
from sws.config import RetrainConfig
from sws.config import retrain_config
from sws.data import load_mnist
from sws.errors import CheckpointError
from sws.errors import ConfigError
from sws.errors import DataError
from sws.errors import DivergenceError
from sws.errors import RunDirError
from sws.errors import StorageError
from sws.errors import SwsError
from sws.errors import TrainingInterrupted
from sws.fileformat import FormatError
from sws.fileformat import load
from sws.fileformat import save
from sws.models import build_model
from sws.prior import GaussianMixturePrior
from sws.quantize import quantize_weights
from sws.train import evaluate
from sws.train import pretrain
from sws.train import retrain
from sws.wrn import build_wrn

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

"""mt: recurrent neural machine translation (bidirectional GRU/LSTM encoder, Bahdanau attention)."""

from mt.config import Config, DecodeConfig, ModelConfig, TrainConfig
from mt.translator import Candidate, Translation, Translator

__all__ = ["Candidate", "Config", "DecodeConfig", "ModelConfig", "TrainConfig", "Translation", "Translator"]
__version__ = "0.1.0"

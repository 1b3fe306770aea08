"""LeWorldModel: ViT encoder, action Embedder, AdaLN-zero causal predictor, projectors and SIGReg."""

from .lewm import PRESETS, LeWM, LeWMConfig, config_from_dict, config_to_dict, preset_config
from .sigreg import SIGReg

__all__ = ["LeWM", "LeWMConfig", "PRESETS", "SIGReg", "preset_config", "config_to_dict", "config_from_dict"]

"""DiffSal: diffusion-based audio-visual saliency prediction (the model room)."""
from salstream.diffsal.config import MODES, AudioConfig, ModelConfig
from salstream.diffsal.registry import available_profiles, create_model, default_config

__all__ = ["AudioConfig", "ModelConfig", "MODES", "available_profiles", "create_model", "default_config"]

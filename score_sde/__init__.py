"""Score-SDE: the NCSN++ network (official checkpoint layout) and its backbone adapter."""
from score_sde.adapter import ScoreSDEBackbone
from score_sde.checkpoint import CheckpointError, load_score_model, save_score_checkpoint
from score_sde.config import NCSNppConfig
from score_sde.ncsnpp import NCSNpp

__all__ = [
    "CheckpointError",
    "NCSNpp",
    "NCSNppConfig",
    "ScoreSDEBackbone",
    "load_score_model",
    "save_score_checkpoint",
]

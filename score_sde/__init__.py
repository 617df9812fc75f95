"""Score-SDE: the VP SDE, the NCSN++ network (official checkpoint layout) and backbone adapters."""
from score_sde.adapter import ScoreSDEBackbone, VPBackbone
from score_sde.checkpoint import CheckpointError, load_score_model, save_score_checkpoint
from score_sde.config import NCSNppConfig
from score_sde.ncsnpp import NCSNpp
from score_sde.sde import DiscreteDDPMSchedule, VPSDE

__all__ = [
    "CheckpointError",
    "DiscreteDDPMSchedule",
    "NCSNpp",
    "NCSNppConfig",
    "ScoreSDEBackbone",
    "VPBackbone",
    "VPSDE",
    "load_score_model",
    "save_score_checkpoint",
]

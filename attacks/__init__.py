"""Attacks on defended models: run(model, x, y, indices, seed) -> AttackOutput; built by name from YAML."""
from attacks import aid_joint, apgd, apgd_ce, autoattack, cascade, diffattack, diffpure_protocol, pgd
from attacks.autoattack import AutoAttackConfig, AutoAttackEval
from attacks.common import AttackOutput
from attacks.pgd import BPDAEOT, PGDEOT, BPDAEOTConfig, PGDEOTConfig
from attacks.registry import ATTACKS, Attack, attack_config, build_attack

__all__ = ["ATTACKS", "Attack", "AttackOutput", "AutoAttackConfig", "AutoAttackEval", "BPDAEOT", "BPDAEOTConfig",
           "PGDEOT", "PGDEOTConfig", "aid_joint", "apgd", "apgd_ce", "attack_config", "autoattack", "build_attack",
           "cascade", "diffattack", "diffpure_protocol", "pgd"]

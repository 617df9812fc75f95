"""Classifiers: [0, 1] images (B, C, H, W) in, logits out; built by name from a ClassifierConfig."""
from classifiers import zoo
from classifiers.registry import CLASSIFIERS, ClassifierConfig, build_classifier
from classifiers.zoo import fmnist_wrn_16_2

__all__ = ["CLASSIFIERS", "ClassifierConfig", "build_classifier", "fmnist_wrn_16_2", "zoo"]

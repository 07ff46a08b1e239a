"""Cert-SSBD and RAB: certified backdoor defense by smoothing over an ensemble."""

from vibe_jax.defenses.cert_ssbd.defense import CertifiedEnsemble, CertSettings, CertSSBD, RAB

__all__ = ["CertSSBD", "RAB", "CertifiedEnsemble", "CertSettings"]

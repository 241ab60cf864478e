"""Reverse-process variances by name, torch-free so params validation can check them: beta-tilde ("small"), beta
("large") (DDPM §3.2), learned (iDDPM §3.1, eq. 15)."""

VARIANCES = ("small", "large", "learned")

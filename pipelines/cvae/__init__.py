"""Conditional VAE augmentation (Sohn, Lee & Yan, NeurIPS 2015): label-conditioned synthesis of
3D training volumes for segmenters."""

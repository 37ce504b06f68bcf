"""Paired 3D MR -> CT translation: pix2pix and supervised regression (issue 18)."""

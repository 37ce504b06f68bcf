"""Shape-consistent 3D CycleGAN (Zhu et al. 2017; Zhang, Yang & Zheng, CVPR 2018)."""

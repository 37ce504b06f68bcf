"""ADDA: Adversarial Discriminative Domain Adaptation (Tzeng, Hoffman, Saenko & Darrell, CVPR 2017)
for dense 3D segmentation: a CT-trained U-Net's encoder adapted to MR without MR labels."""

"""The CLASS visual encoder: backbones, augmentation, ObservationEncoder, soft InfoNCE and LARS.

Torch is imported by the submodules; import them directly, e.g.
    from class_ros.encoder.model import ObservationEncoder
    from class_ros.encoder.config import EncoderConfig
    from class_ros.encoder.loss import soft_infonce
"""

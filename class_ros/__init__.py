"""class_ros: CLASS (Contrastive Learning via Action Sequence Supervision) for ROS 2 arms."""

__version__ = "0.1.0"

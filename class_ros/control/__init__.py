"""Execution: action chunks -> a steady, safe command stream (ROS-free, unit-testable)."""
from class_ros.control.ensemble import Chunk, ChunkEnsembler
from class_ros.control.safety import (EePoseLimits, EePoseSafetyFilter, FilterResult, JointLimits,
                                      JointSafetyFilter)
from class_ros.control.watchdog import Watchdog

__all__ = ["Chunk", "ChunkEnsembler", "EePoseLimits", "EePoseSafetyFilter", "FilterResult", "JointLimits",
           "JointSafetyFilter", "Watchdog"]

"""Execution: action chunks -> a steady, safe command stream (ROS-free, unit-testable)."""
from class_ros.control.arm_state import ArmStateMachine, Decision
from class_ros.control.ensemble import Chunk, ChunkEnsembler
from class_ros.control.safety import (EePoseLimits, EePoseSafetyFilter, FilterResult, JointLimits,
                                      JointSafetyFilter)
from class_ros.control.watchdog import Watchdog

__all__ = ["ArmStateMachine", "Chunk", "ChunkEnsembler", "Decision", "EePoseLimits", "EePoseSafetyFilter",
           "FilterResult", "JointLimits", "JointSafetyFilter", "Watchdog"]

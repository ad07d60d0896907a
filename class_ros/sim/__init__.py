"""The built-in MuJoCo arm world: a 6-DoF arm with a parallel gripper, three tasks, camera shift,
scripted experts and evaluation helpers.

- `robot`: joint names, limits, gripper units.      - `env`: `ArmEnv` (gymnasium-style + ROS-node access).
- `tasks`: layouts, success predicates, time limits. - `cameras`: the camera-mode distributions.
- `kinematics`: Jacobian DLS IK.                     - `expert`: scripted demonstrators.
- `stats`: `wilson_interval`.
Import the submodules directly; this package imports nothing heavy.
"""

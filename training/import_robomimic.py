"""`class-ros import-robomimic`: a robomimic / MimicGen HDF5 file -> a dataset store.

Usage:
    class-ros import-robomimic lift_ph_image.hdf5 --out data/lift
    class-ros import-robomimic lift_ph_image.hdf5 --out data/lift_train --filter-key train \
        --obs-keys agentview_image robot0_eef_pos robot0_eef_quat robot0_gripper_qpos

Layout, dtype rules and the metadata kept (env_args) are described in `class_ros/data/robomimic.py`.
"""
from __future__ import annotations

from class_ros.data.robomimic import import_robomimic  # the function tests and `class-ros demo` call

__all__ = ["add_arguments", "run", "import_robomimic"]


def add_arguments(parser) -> None:
    parser.add_argument("file", help="robomimic HDF5 file (data/demo_N/obs/<key>, data/demo_N/actions)")
    parser.add_argument("--out", required=True, help="dataset folder to create")
    parser.add_argument("--obs-keys", nargs="+", default=None, metavar="KEY",
                        help="observation keys to import (default: all keys of the first demo)")
    parser.add_argument("--filter-key", default=None, help="import only the demos listed in mask/<KEY>, e.g. train")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")


def run(args) -> int:
    import_robomimic(args.file, args.out, obs_keys=args.obs_keys, filter_key=args.filter_key,
                     overwrite=args.overwrite)
    return 0

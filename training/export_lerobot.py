"""`class-ros export-lerobot`: a dataset store -> a LeRobot v3.0 dataset (to train LeRobot's ACT, Diffusion, pi0).

Usage:
    class-ros export-lerobot data/my_task --out lerobot/my_task
    class-ros export-lerobot data/my_task --out lerobot/my_task --codec av1 --task "pick up the cube"
    # then, with LeRobot installed: LeRobotDataset("me/my_task", root="lerobot/my_task")

Naming is the reverse of import-lerobot (obs/<cam> -> observation.images.<cam>, obs/joint_pos ->
observation.state); a dataset that came from import-lerobot gets its original feature names and tasks back.
"""
from __future__ import annotations

from class_ros.data.lerobot.exporter import export_lerobot
from class_ros.data.lerobot.video import ENCODERS

__all__ = ["add_arguments", "run", "export_lerobot"]


def add_arguments(parser) -> None:
    parser.add_argument("dataset", help="dataset store folder (from convert, import-robomimic, import-lerobot, ...)")
    parser.add_argument("--out", required=True, help="LeRobot dataset folder to create")
    parser.add_argument("--fps", type=int, default=None,
                        help="frame rate of the export; the dataset's control rate must be a whole multiple of it "
                             "(frames are then subsampled). Default: the control rate")
    parser.add_argument("--codec", choices=sorted(ENCODERS), default="h264",
                        help="video codec (LeRobot's own default is av1; h264 encodes faster)")
    parser.add_argument("--crf", type=int, default=30, help="video quality: lower is better and bigger (default 30)")
    parser.add_argument("--task", default=None,
                        help="task text for every frame (default: the imported tasks, else the dataset folder's name)")
    parser.add_argument("--robot-type", default=None, help="robot_type for info.json (e.g. so101_follower)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing LeRobot dataset at --out")


def run(args) -> int:
    export_lerobot(args.dataset, args.out, fps=args.fps, codec=args.codec, crf=args.crf, task=args.task,
                   robot_type=args.robot_type, overwrite=args.overwrite)
    return 0

"""`class-ros import-lerobot`: a LeRobot dataset (v3.0, or v2.1) -> a dataset store.

Usage:
    class-ros import-lerobot ~/.cache/huggingface/lerobot/user/so101_pick --out data/so101 --image-size 96 96
    class-ros import-lerobot PATH --out data/first5 --episodes 0:5 --cameras wrist

Naming: observation.images.<cam> -> obs/<cam>, observation.state -> obs/joint_pos (its names become the
dataset's joint_names), action -> action; see class_ros/data/lerobot/names.py and docs/pipeline.md.
"""
from __future__ import annotations

from class_ros.data.lerobot.importer import DEFAULT_TOLERANCE_S, import_lerobot

__all__ = ["add_arguments", "run", "import_lerobot"]


def add_arguments(parser) -> None:
    parser.add_argument("path", help="LeRobot dataset root (the folder holding meta/info.json)")
    parser.add_argument("--out", required=True, help="dataset folder to create")
    parser.add_argument("--episodes", default=None, metavar="SPEC",
                        help="episodes to import: START:STOP, N or N,M,... (default: all)")
    parser.add_argument("--cameras", nargs="+", default=None, metavar="CAM",
                        help="cameras to import, named without 'observation.images.' (default: all)")
    parser.add_argument("--image-size", nargs=2, type=int, default=None, metavar=("H", "W"),
                        help="resize every camera to H x W like `convert` (default: the videos' own size)")
    parser.add_argument("--skip", nargs="+", default=(), metavar="FEATURE",
                        help="LeRobot features to leave out (e.g. ones that have no class_ros key)")
    parser.add_argument("--tolerance-s", type=float, default=DEFAULT_TOLERANCE_S,
                        help="largest gap between a frame's timestamp and its video frame (LeRobot's default)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")


def run(args) -> int:
    import_lerobot(args.path, args.out, episodes=args.episodes, cameras=args.cameras, image_size=args.image_size,
                   skip=args.skip, tolerance_s=args.tolerance_s, overwrite=args.overwrite)
    return 0

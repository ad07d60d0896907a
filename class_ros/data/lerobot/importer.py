"""LeRobot dataset (v3.0 / v2.1) -> our episode store.

Per episode: the low-dim features come from its data parquet rows (sorted by frame_index), each camera's
frames from its mp4 at `from_timestamp + timestamp` (matched by presentation time, see video.py), resized
like `convert` does. Everything that can be checked without decoding (version, features, files, codecs,
lengths, timestamps) is checked before the first write; a failure while writing removes the half-made
dataset, so an import either completes or leaves nothing.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from class_ros.data.lerobot.layout import IMAGE, VIDEO, EpisodeRef, LeRobotSource, read_source, read_table
from class_ros.data.lerobot.names import EXTRA, INDEX_FEATURES, PROPRIO, flat_names, store_key
from class_ros.data.schema import ACTION, OBS_PREFIX, DatasetMeta, KeySchema, obs_key
from class_ros.errors import ClassRosError

DEFAULT_TOLERANCE_S = 1e-4  # LeRobotDataset's own default for matching timestamps to video frames
NUMERIC = ("float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8", "bool")


def parse_episodes(spec: str | None, available: list[int]) -> list[int]:
    """'0:5' (start:stop, either may be empty), '3' or '1,4,7' -> the selected episode indices."""
    if spec is None:
        return list(available)
    try:
        if ":" in spec:
            start, _, stop = spec.partition(":")
            lo, hi = int(start) if start else min(available), int(stop) if stop else max(available) + 1
            chosen = [i for i in available if lo <= i < hi]
        else:
            chosen = [int(s) for s in spec.split(",")]
    except ValueError:
        raise ClassRosError(f"--episodes {spec!r} must be START:STOP, N or N,M,...") from None
    missing = sorted(set(chosen) - set(available))
    if missing:
        raise ClassRosError(f"--episodes {spec!r} names episodes {missing[:5]} that the dataset does not have "
                            f"(it has {min(available)}..{max(available)}).")
    if not chosen:
        raise ClassRosError(f"--episodes {spec!r} selects no episode (the dataset has {min(available)}..{max(available)}).")
    return sorted(set(chosen))


def _plan_keys(src: LeRobotSource, cameras, image_size, skip) -> tuple[dict, dict[str, KeySchema], dict]:
    """(feature -> store key, store key schemas, store key -> per-dim names) for the features imported."""
    skip = set(skip or ())
    unknown = sorted(skip - set(src.features))
    if unknown:
        raise ClassRosError(f"--skip names {unknown}, which are not features of the dataset ({sorted(src.features)}).")
    videos = [f for f, ft in src.features.items() if ft.dtype in (VIDEO, IMAGE) and f not in skip]
    if cameras:
        by_cam = {store_key(f)[len(OBS_PREFIX):]: f for f in videos if store_key(f)}
        missing = [c for c in cameras if c not in by_cam]
        if missing:
            raise ClassRosError(f"--cameras {missing} are not in the dataset; its cameras are {sorted(by_cam)}.")
        skip |= {f for c, f in by_cam.items() if c not in cameras}
    mapping, schemas, names, unmapped = {}, {}, {}, []
    for name, ft in src.features.items():
        if name in INDEX_FEATURES or name in skip:
            continue
        key = store_key(name)
        if ft.dtype in (VIDEO, IMAGE) and key is not None and len(ft.shape) == 3:
            hw = tuple(image_size) if image_size else _video_hw(ft)
            schemas[key] = KeySchema("uint8", (*hw, 3), "image")
        elif ft.dtype in NUMERIC and len(ft.shape) == 1 and key is not None:
            schemas[key] = KeySchema("float32", ft.shape, "low_dim")
            names[key] = flat_names(ft.names, ft.shape[0])
        else:
            unmapped.append((name, f"{name!r} ({ft.dtype} {list(ft.shape)})"))
            continue
        if key in mapping.values():
            other = next(f for f, k in mapping.items() if k == key)
            raise ClassRosError(f"features {other!r} and {name!r} would both become {key!r}; leave one out with --skip.")
        mapping[name] = key
    if unmapped:
        raise ClassRosError(f"features {', '.join(d for _, d in unmapped)} cannot be mapped to class_ros keys "
                            "(cameras must be observation.images.* videos or images, other observations and action "
                            f"one-dimensional numbers); leave them out with --skip {' '.join(n for n, _ in unmapped)}.")
    if ACTION not in schemas:
        raise ClassRosError(f"{src.root} has no `action` feature; class_ros learns from actions.")
    return mapping, schemas, names


def _video_hw(ft) -> tuple[int, int]:
    """(H, W) of a video feature: info.json gives [H, W, C] (names say the order when it is [C, H, W])."""
    names = ft.names if isinstance(ft.names, list) else []
    if names[:1] in (["channel"], ["channels"]):
        return ft.shape[1], ft.shape[2]
    return ft.shape[0], ft.shape[1]


def _column(table, name: str, dim: int) -> np.ndarray:
    """(N, dim) float32 array of a fixed-size-list, list or scalar column."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = table.column(name).combine_chunks()
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type):
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        if len(lengths) and not (lengths == dim).all():
            raise ClassRosError(f"column {name!r} has rows of {int(lengths[lengths != dim][0])} values; "
                                f"info.json says {dim}.")
        flat = pc.list_flatten(col).to_numpy(zero_copy_only=False)
        return np.asarray(flat, dtype=np.float32).reshape(len(col), dim)
    if dim != 1:
        raise ClassRosError(f"column {name!r} holds single values; info.json says {dim} per frame.")
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(col), 1)


class _Rows:
    """The data parquet rows of one episode at a time, reading each data file once."""

    def __init__(self, src: LeRobotSource, columns: list[str]):
        self.src, self.columns = src, columns
        self.path, self.table, self.episode_index = None, None, None

    def episode(self, ep: EpisodeRef):
        if ep.data_file != self.path:
            table = read_table(ep.data_file, self.src.root)
            missing = [c for c in self.columns if c not in table.column_names]
            if missing:
                raise ClassRosError(f"{ep.data_file.relative_to(self.src.root)} lacks the columns {missing} that "
                                    "info.json lists.")
            self.path, self.table = ep.data_file, table.select(self.columns)
            self.episode_index = np.asarray(self.table.column("episode_index").to_numpy(zero_copy_only=False))
        rows = self.table.take(np.flatnonzero(self.episode_index == ep.index))
        order = np.argsort(np.asarray(rows.column("frame_index").to_numpy(zero_copy_only=False)), kind="stable")
        return rows.take(order)


def _pictures(table, name: str, size) -> np.ndarray:
    """(T, H, W, 3) uint8 from an `image` column (LeRobot stores each frame as {bytes, path}, the bytes PNG)."""
    from class_ros.data.images import decode_compressed, preprocess

    col = table.column(name).combine_chunks()
    if not hasattr(col, "field"):
        raise ClassRosError(f"column {name!r} is not LeRobot's image struct of bytes and path.")
    out = np.empty((len(col), *size, 3), np.uint8)
    for i, data in enumerate(col.field("bytes").to_pylist()):
        if not data:
            raise ClassRosError(f"column {name!r} frame {i} holds no image bytes (a path outside the parquet?).")
        out[i] = preprocess(decode_compressed("png", data, topic=name), size)
    return out


def _check_rows(rows, ep: EpisodeRef, fps: float, tol: float) -> np.ndarray:
    """Check the episode's rows against its metadata; return the timestamps (T,) float64."""
    if rows.num_rows != ep.length:
        raise ClassRosError(f"the data file {ep.data_file.name} holds {rows.num_rows} frames but the "
                            f"episode metadata says {ep.length}.")
    frame_index = np.asarray(rows.column("frame_index").to_numpy(zero_copy_only=False))
    if not np.array_equal(frame_index, np.arange(ep.length)):
        raise ClassRosError(f"frame_index is not 0..{ep.length - 1} (frames are missing or repeated).")
    ts = np.asarray(rows.column("timestamp").to_numpy(zero_copy_only=False), dtype=np.float64)
    bad = np.flatnonzero(np.abs(ts - frame_index / fps) > tol)
    if len(bad):
        i = int(bad[0])
        raise ClassRosError(f"frame {i} is at {ts[i]:.4f} s, not frame_index / fps = {i / fps:.4f} s; a "
                            "class_ros dataset needs frames at a fixed rate.")
    return ts


def _check_files(src: LeRobotSource, episodes: list[EpisodeRef], videos: list[str]) -> None:
    """Every data file and video exists, every video opens with a codec PyAV decodes and lasts as long as its table."""
    from class_ros.data.lerobot.video import VideoReader

    ends: dict[Path, float] = {}
    for ep in episodes:
        if not ep.data_file.is_file():
            raise ClassRosError(f"episode {ep.index}'s data file {ep.data_file.relative_to(src.root)} is missing; the "
                                "dataset is incomplete.")
        for feature in videos:
            path, start = ep.videos[feature]
            if path not in ends:
                reader = VideoReader(path)
                ends[path] = reader.end_s
                reader.close()
            last = start + (ep.length - 1) / src.fps
            # end_s is just after the last frame, so a frame needed at end_s - 1/fps is the video's last one
            if ends[path] is not None and last > ends[path] - 0.5 / src.fps:
                raise ClassRosError(f"episode {ep.index}: video {path} lasts {ends[path]:.3f} s but the table has a "
                                    f"frame at {last:.3f} s; the video is shorter than its table (truncated?).")


def import_lerobot(path, out, episodes: str | None = None, cameras=None, image_size=None, skip=(),
                   tolerance_s: float = DEFAULT_TOLERANCE_S, overwrite: bool = False) -> dict:
    """Import a LeRobot dataset into a new dataset store at `out`; returns a summary dict."""
    from tqdm import tqdm

    from class_ros.data.images import preprocess
    from class_ros.data.lerobot.video import VideoReader
    from class_ros.data import outputs
    from class_ros.data.store import KIND as STORE_KIND
    from class_ros.data.store import EpisodeStore

    out = Path(out)
    outputs.check_target(out, STORE_KIND, overwrite=overwrite)  # before reading anything
    if image_size is not None and (len(image_size) != 2 or min(image_size) <= 0):
        raise ClassRosError(f"--image-size {image_size} must be two positive integers (height, width).")
    src = read_source(path)
    mapping, schemas, names = _plan_keys(src, cameras, image_size, skip)
    chosen = parse_episodes(episodes, [e.index for e in src.episodes])
    plan = [e for e in src.episodes if e.index in set(chosen)]
    videos = [f for f in mapping if src.features[f].dtype == VIDEO]
    pictures = [f for f in mapping if src.features[f].dtype == IMAGE]  # PNG / JPEG bytes inside the data parquet
    lowdim = [f for f, k in mapping.items() if schemas[k].kind == "low_dim"]
    _check_files(src, plan, videos)
    rows = _Rows(src, [*lowdim, *pictures, "timestamp", "frame_index", "episode_index", "task_index"])
    episode_tasks = []  # and every episode's rows, before anything is written
    for ep in plan:
        try:
            table = rows.episode(ep)
            _check_rows(table, ep, src.fps, tolerance_s)
            for f in lowdim:
                _column(table, f, schemas[mapping[f]].shape[0])
        except ClassRosError as err:
            raise ClassRosError(f"episode {ep.index}: {err}") from None
        episode_tasks.append(_runs(np.asarray(table.column("task_index").to_numpy(zero_copy_only=False))))

    action_names = names.get(ACTION) or [f"a{i}" for i in range(schemas[ACTION].shape[0])]
    joint_names = names.get(obs_key(PROPRIO)) or []
    kind = "joint_position" if joint_names and joint_names[: len(action_names)] == action_names else "other"
    extra = {EXTRA: {"source": str(src.root), "codebase_version": src.version, "robot_type": src.robot_type,
                     "features": {k: f for f, k in mapping.items()},
                     "names": {mapping[f]: src.features[f].names for f in mapping},
                     "tasks": src.tasks, "episodes": [e.index for e in plan], "episode_tasks": episode_tasks}}
    meta = DatasetMeta(control_rate_hz=src.fps, action_names=action_names, action_kind=kind, keys=schemas,
                       source="lerobot", joint_names=joint_names, extra=extra)

    readers: dict[str, VideoReader] = {}  # one open mp4 per camera: v3 files hold their episodes in order
    total = sum(e.length for e in plan) * max(1, len(videos) + len(pictures))  # frames per camera (or per episode, without one)
    ep = plan[0]
    lineage = {"lerobot": str(src.root), "codebase_version": src.version, "episodes": [e.index for e in plan]}
    try:  # the dataset appears at `out` whole, or not at all (an old one stays until the new one is complete)
        with EpisodeStore.build(out, overwrite=overwrite, lineage=lineage) as build, \
                tqdm(total=total, desc="import-lerobot", unit="frame", leave=False) as bar:
            store = build.create(meta)
            for ep in plan:
                table = rows.episode(ep)
                ts = _check_rows(table, ep, src.fps, tolerance_s)
                episode = {mapping[f]: _column(table, f, schemas[mapping[f]].shape[0]) for f in lowdim}
                for f in pictures:
                    episode[mapping[f]] = _pictures(table, f, schemas[mapping[f]].shape[:2])
                    bar.update(ep.length)
                for f in videos:
                    mp4, start = ep.videos[f]
                    if f not in readers or readers[f].path != mp4:
                        if f in readers:
                            readers[f].close()
                        readers[f] = VideoReader(mp4)
                    size = schemas[mapping[f]].shape[:2]
                    frames = np.empty((ep.length, *size, 3), np.uint8)  # one episode of one camera at a time
                    for i, rgb in enumerate(readers[f].frames_at(start + ts, tolerance_s)):
                        frames[i] = preprocess(rgb, size)
                        bar.update(1)
                    episode[mapping[f]] = frames
                store.append_episode(episode)
                if not videos and not pictures:
                    bar.update(ep.length)
    except ClassRosError as err:
        raise ClassRosError(f"episode {ep.index}: {err}") from None
    finally:
        for r in readers.values():
            r.close()
    store = EpisodeStore.open(out)
    summary = {"out": str(out), "episodes": store.n_episodes, "frames": store.n_frames, "fps": src.fps,
               "keys": sorted(schemas), "version": src.version, "tasks": src.tasks}
    print(f"import-lerobot: {store.n_episodes} episodes, {store.n_frames} frames ({src.version}, {src.fps:g} fps) "
          f"written to {out}")
    return summary


def _runs(task_index: np.ndarray) -> list[list[int]]:
    """Per-frame task indices as [[first frame, task index], ...] runs (usually one per episode)."""
    change = np.flatnonzero(np.diff(task_index)) + 1
    starts = np.concatenate([[0], change]).astype(int)
    return [[int(s), int(task_index[s])] for s in starts]

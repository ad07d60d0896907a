"""Our episode store -> a LeRobot v3.0 dataset (what LeRobotDataset(repo_id, root=PATH) loads).

    PATH/meta/info.json                         codebase_version v3.0, fps, features (shapes, names, video info)
    PATH/meta/stats.json                        dataset statistics (stats.py)
    PATH/meta/tasks.parquet                     task strings (pandas index) -> task_index
    PATH/meta/episodes/chunk-000/file-000.parquet  one row per episode: files, ranges, times, stats/...
    PATH/data/chunk-XXX/file-YYY.parquet        one row per frame: low-dim features, timestamp, indices
    PATH/videos/<feature>/chunk-XXX/file-YYY.mp4  one mp4 per camera per file, episodes back to back

Episodes are appended to the current files until a video passes `video_file_mb` (or the data file
`data_file_mb`), then every stream moves on to the next file (1000 files per chunk). Frames are read
from the store in blocks, so memory stays bounded by one block of images, whatever the episode length.
The dataset is built in a hidden sibling folder and renamed into place once complete.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from class_ros.data import outputs
from class_ros.data.lerobot.names import CODEBASE_VERSION, EXTRA, INDEX_FEATURES, flat_names, lerobot_feature
from class_ros.data.lerobot.stats import aggregate, image_sample, image_stats, thumbnail, to_json, vector_stats
from class_ros.data.schema import ACTION
from class_ros.errors import ClassRosError

DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
CHUNKS_SIZE = 1000
BLOCK = 64  # image frames read from the store at a time
MB = 1024 * 1024


def _fps(rate: float, fps: int | None) -> tuple[int, int]:
    """(fps, step): the export's frame rate and the subsampling step from the dataset's control rate."""
    target = fps if fps is not None else round(rate)
    if target <= 0 or abs(rate / target - round(rate / target)) > 1e-6 or round(rate / target) < 1:
        raise ClassRosError(f"the dataset runs at {rate:g} Hz; --fps must divide it into whole steps (LeRobot needs an "
                            f"integer fps{'' if fps else ', so pass --fps'}), got {target}.")
    return int(target), int(round(rate / target))


def _features(store, fps: int, codec: str) -> tuple[dict, dict]:
    """(info.json features, store key -> feature name)."""
    meta = store.meta
    lr = meta.extra.get(EXTRA, {}) if isinstance(meta.extra.get(EXTRA), dict) else {}
    original, original_names = lr.get("features", {}), lr.get("names", {})
    features, by_key = {}, {}
    for key in [*meta.image_keys, *meta.low_dim_keys, ACTION]:
        schema = meta.keys[key]
        name = original.get(key) or lerobot_feature(key, schema.kind)
        by_key[key] = name
        if schema.kind == "image":
            h, w, _ = schema.shape
            axes = original_names.get(key)  # an imported camera keeps its own spelling ("channel" or "channels")
            axes = axes if isinstance(axes, list) and axes[:2] == ["height", "width"] else ["height", "width", "channels"]
            features[name] = {"dtype": "video", "shape": [h, w, 3], "names": axes,
                              "info": {"video.height": h, "video.width": w, "video.codec": codec,
                                       "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": fps,
                                       "video.channels": 3, "has_audio": False}}
            continue
        dim = schema.shape[0]
        names = original_names.get(key)
        if flat_names(names, dim) is None:
            own = meta.action_names if key == ACTION else (meta.joint_names if name == "observation.state" else [])
            names = list(own) if len(own) == dim else [f"{name.split('.')[-1]}_{i}" for i in range(dim)]
        features[name] = {"dtype": "float32", "shape": [dim], "names": names}
    for name in INDEX_FEATURES:
        features[name] = {"dtype": "float32" if name == "timestamp" else "int64", "shape": [1], "names": None}
    return features, by_key


def _tasks(store, task: str | None) -> tuple[list[str], list[list[list[int]]]]:
    """(task strings, per-episode [[first frame, task index], ...] runs): the imported ones, else one task for all."""
    lr = store.meta.extra.get(EXTRA, {}) if isinstance(store.meta.extra.get(EXTRA), dict) else {}
    tasks, runs = lr.get("tasks"), lr.get("episode_tasks")
    if task is None and tasks and isinstance(runs, list) and len(runs) == store.n_episodes:
        return list(tasks), runs
    return [task or store.path.name], [[[0, 0]] for _ in range(store.n_episodes)]


def _hf_metadata(features: dict) -> bytes:
    """The `huggingface` schema metadata the `datasets` library writes into its parquet files."""
    hf = {}
    for name, ft in features.items():
        if ft["dtype"] == "video":
            continue
        value = {"dtype": ft["dtype"], "_type": "Value"}
        hf[name] = value if name in INDEX_FEATURES else {"feature": value, "length": ft["shape"][0], "_type": "List"}
    return json.dumps({"info": {"features": hf}}).encode()


class _Files:
    """The current data parquet and per-camera mp4 files, rolled over together when one grows too big."""

    def __init__(self, root: Path, cameras: dict[str, tuple[int, int]], fps: int, codec: str, crf: int,
                 schema, video_limit: int, data_limit: int):
        self.root, self.cameras, self.fps, self.codec, self.crf, self.schema = root, cameras, fps, codec, crf, schema
        self.video_limit, self.data_limit = video_limit, data_limit
        self.chunk, self.file = 0, 0
        self.videos, self.data, self.data_bytes = {}, None, 0

    def video(self, feature: str):
        from class_ros.data.lerobot.video import VideoWriter

        if feature not in self.videos:
            path = self.root / VIDEO_PATH.format(video_key=feature, chunk_index=self.chunk, file_index=self.file)
            self.videos[feature] = VideoWriter(path, self.fps, self.codec, self.cameras[feature], self.crf)
        return self.videos[feature]

    def write_rows(self, table) -> None:
        import pyarrow.parquet as pq

        if self.data is None:
            path = self.root / DATA_PATH.format(chunk_index=self.chunk, file_index=self.file)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.data = pq.ParquetWriter(path, self.schema, compression="snappy")
        self.data.write_table(table)
        self.data_bytes += table.nbytes

    def maybe_roll(self) -> None:
        """After an episode: move every stream to the next file if one passed its size limit."""
        # (an encoder with look-ahead may not have written the file yet)
        big_video = any(v.path.is_file() and v.path.stat().st_size > self.video_limit for v in self.videos.values())
        if big_video or self.data_bytes > self.data_limit:
            self.close()
            self.chunk, self.file = (self.chunk + 1, 0) if self.file == CHUNKS_SIZE - 1 else (self.chunk, self.file + 1)

    def close(self) -> None:
        for v in self.videos.values():
            v.close()
        if self.data is not None:
            self.data.close()
        self.videos, self.data, self.data_bytes = {}, None, 0


def _check_out(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not overwrite:
        raise ClassRosError(f"{out} already exists; choose another --out or pass --overwrite.")
    if not (out / "meta" / "info.json").is_file():
        raise ClassRosError(f"{out} exists and is not a LeRobot dataset (no meta/info.json); --overwrite replaces only "
                            "a LeRobot dataset, so choose another --out.")


def export_lerobot(dataset, out, fps: int | None = None, codec: str = "h264", crf: int = 30, task: str | None = None,
                   robot_type: str | None = None, overwrite: bool = False, video_file_mb: float = 500,
                   data_file_mb: float = 100) -> dict:
    """Write the dataset store at `dataset` as a LeRobot v3.0 dataset at `out`; returns a summary dict."""
    import pyarrow as pa
    from tqdm import tqdm

    from class_ros.data.store import EpisodeStore

    store = EpisodeStore.open(dataset)
    out = Path(out)
    _check_out(out, overwrite)
    meta = store.meta
    if store.n_episodes == 0:
        raise ClassRosError(f"{store.path} holds no episodes.")
    fps, step = _fps(meta.control_rate_hz, fps)
    features, by_key = _features(store, fps, codec)
    tasks, runs = _tasks(store, task)
    lr = meta.extra.get(EXTRA, {}) if isinstance(meta.extra.get(EXTRA), dict) else {}
    schema = pa.schema([pa.field(by_key[k], pa.list_(pa.float32(), meta.keys[k].shape[0]))
                        for k in [*meta.low_dim_keys, ACTION]]
                       + [pa.field(n, pa.float32() if n == "timestamp" else pa.int64()) for n in INDEX_FEATURES],
                       metadata={"huggingface": _hf_metadata(features)})
    cameras = {by_key[k]: meta.keys[k].shape[:2] for k in meta.image_keys}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    files = _Files(tmp, cameras, fps, codec, crf, schema, int(video_file_mb * MB), int(data_file_mb * MB))
    spans = [np.arange(int(s), int(e), step) for s, e in zip(store.episode_starts, store.episode_ends)]
    rows, per_episode, index = [], [], 0
    try:
        total = sum(map(len, spans)) * max(1, len(cameras))
        with tqdm(total=total, desc="export-lerobot", unit="frame", leave=False) as bar:
            for e, frames in enumerate(spans):
                row, stats = _write_episode(store, files, e, frames, index, runs[e], tasks, by_key, bar)
                rows.append(row)
                per_episode.append(stats)
                index += len(frames)
        files.close()
        info = {"codebase_version": CODEBASE_VERSION, "robot_type": robot_type or lr.get("robot_type"),
                "total_episodes": store.n_episodes, "total_frames": index, "total_tasks": len(tasks),
                "chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": data_file_mb,
                "video_files_size_in_mb": video_file_mb, "fps": fps, "splits": {"train": f"0:{store.n_episodes}"},
                "data_path": DATA_PATH, "video_path": VIDEO_PATH if cameras else None, "features": features}
        _write_meta(tmp, info, rows, tasks, per_episode)
        outputs.replace_folder(tmp, out)  # an old dataset there goes only once the new one is in
    except BaseException:
        files.close()
        shutil.rmtree(tmp, ignore_errors=True)  # an export either completes or leaves nothing
        raise
    summary = {"out": str(out), "episodes": store.n_episodes, "frames": index, "fps": fps, "codec": codec,
               "features": sorted(features)}
    print(f"export-lerobot: {store.n_episodes} episodes, {index} frames ({CODEBASE_VERSION}, {fps} fps, {codec}) "
          f"written to {out}")
    return summary


def _write_episode(store, files: _Files, e: int, frames: np.ndarray, index: int, runs: list, tasks: list[str],
                   by_key: dict, bar) -> tuple[dict, dict]:
    """Append episode `e` (store frames `frames`) to the current files; its episodes-table row and its statistics."""
    import pyarrow as pa

    meta, T = store.meta, len(frames)
    task_index = np.zeros(T, np.int64)
    for first, t in runs:  # [[first frame, task index], ...] in the store's frames
        task_index[frames - frames[0] >= first] = t
    columns = {by_key[k]: _span(store, k, frames).astype(np.float32) for k in [*meta.low_dim_keys, ACTION]}
    columns.update(timestamp=(np.arange(T) / files.fps).astype(np.float32), frame_index=np.arange(T),
                   episode_index=np.full(T, e), index=np.arange(index, index + T), task_index=task_index)
    stats = {name: vector_stats(v.reshape(T, -1)) for name, v in columns.items()}
    row = {"episode_index": e, "tasks": [tasks[t] for t in dict.fromkeys(task_index.tolist())], "length": T,
           "data/chunk_index": files.chunk, "data/file_index": files.file,
           "dataset_from_index": index, "dataset_to_index": index + T}
    for key in meta.image_keys:
        feature = by_key[key]
        writer = files.video(feature)
        first = writer.frames  # this episode's first frame in the camera's current file
        sample, thumbs = set(image_sample(T).tolist()), []
        for b in range(0, T, BLOCK):
            block = _span(store, key, frames[b: b + BLOCK])
            for i, img in enumerate(block, b):
                writer.write(img)
                if i in sample:
                    thumbs.append(thumbnail(img))
            bar.update(len(block))
        stats[feature] = image_stats(np.stack(thumbs))
        row.update({f"videos/{feature}/chunk_index": files.chunk, f"videos/{feature}/file_index": files.file,
                    f"videos/{feature}/from_timestamp": first / files.fps,
                    f"videos/{feature}/to_timestamp": writer.frames / files.fps})
    if not meta.image_keys:
        bar.update(T)
    files.write_rows(pa.table({n: _arrow(v, files.schema.field(n).type) for n, v in columns.items()},
                              schema=files.schema))
    for feature, s in stats.items():
        row.update({f"stats/{feature}/{k}": v for k, v in to_json(s).items()})
    row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
    files.maybe_roll()
    return row, stats


def _write_meta(root: Path, info: dict, rows: list[dict], tasks: list[str], per_episode: list[dict]) -> None:
    """meta/: the episodes table, tasks, dataset statistics and (last) info.json."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / EPISODES_PATH).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), root / EPISODES_PATH, compression="snappy")
    # LeRobot reads tasks.parquet with pandas: the task strings are the index, task_index the column
    pd.DataFrame({"task_index": np.arange(len(tasks))}, index=pd.Index(tasks)).to_parquet(root / "meta/tasks.parquet")
    stats = {name: to_json(aggregate([s[name] for s in per_episode])) for name in per_episode[0]}
    (root / "meta/stats.json").write_text(json.dumps(stats, indent=4))
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))


def _span(store, key: str, frames: np.ndarray) -> np.ndarray:
    """Evenly spaced frames of `key`, read as one contiguous slice (far faster than a fancy-index read)."""
    step = int(frames[1] - frames[0]) if len(frames) > 1 else 1
    return np.asarray(store.array(key)[int(frames[0]): int(frames[-1]) + 1])[::step]


def _arrow(values: np.ndarray, type_):
    import pyarrow as pa

    if pa.types.is_fixed_size_list(type_):
        flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
        return pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), type_.list_size)
    return pa.array(values, type_)



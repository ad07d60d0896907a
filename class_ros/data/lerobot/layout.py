"""Read a LeRobot dataset's metadata (v3.0, or v2.1) into one list of episodes with their files.

v3.0 (several episodes per file, located by the episode metadata):

    meta/info.json                      codebase_version, fps, features, data_path, video_path
    meta/tasks.parquet                  task_index + the task string (pandas index column, or `task`)
    meta/episodes/chunk-*/file-*.parquet  one row per episode: length, tasks, data/{chunk,file}_index,
                                        videos/<key>/{chunk_index, file_index, from_timestamp, to_timestamp}
    data/chunk-XXX/file-YYY.parquet     one row per frame: the low-dim features + timestamp, frame_index, ...
    videos/<key>/chunk-XXX/file-YYY.mp4 the frames of several episodes back to back

v2.1 (one file per episode): meta/episodes.jsonl and meta/tasks.jsonl, data and videos per episode,
each video starting at time 0. Older versions (v1.x, v2.0) are refused with what to do.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from class_ros.errors import ClassRosError

VIDEO = "video"
IMAGE = "image"  # frames as PNG bytes inside the data parquet (datasets recorded without video)


@dataclass
class Feature:
    """One entry of info.json's `features`."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    names: object = None  # as info.json has it: a list, a dict of one list, or null
    info: dict = field(default_factory=dict)


@dataclass
class EpisodeRef:
    """Where one episode's frames are: its data parquet and, per camera, the mp4 and the episode's start in it."""

    index: int  # LeRobot's episode_index
    length: int
    data_file: Path
    tasks: list[str]
    videos: dict[str, tuple[Path, float]]  # video feature -> (mp4, from_timestamp in seconds)


@dataclass
class LeRobotSource:
    """A LeRobot dataset's metadata, normalised over versions."""

    root: Path
    version: str
    fps: float
    robot_type: str | None
    features: dict[str, Feature]
    episodes: list[EpisodeRef]
    tasks: list[str]  # by task_index

    @property
    def video_features(self) -> list[str]:
        return [k for k, f in self.features.items() if f.dtype == VIDEO]


def _read_json(path: Path, root: Path) -> object:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ClassRosError(f"{root} is missing {path.relative_to(root)}; the dataset is incomplete.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ClassRosError(f"{path} is not valid JSON ({err}).") from None


def _read_jsonl(path: Path, root: Path) -> list[dict]:
    if not path.is_file():
        raise ClassRosError(f"{root} is missing {path.relative_to(root)}; the dataset is incomplete.")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ClassRosError(f"{path} line {n} is not valid JSON ({err}).") from None
    return rows


def read_table(path: Path, root: Path, columns: list[str] | None = None):
    """A parquet file as a pyarrow Table, or one clear sentence when it is missing or unreadable."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise ClassRosError(f"{root} is missing {path.relative_to(root)}; the dataset is incomplete.")
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as err:
        raise ClassRosError(f"{path} is not a readable parquet file ({err}).") from None


def _fill(template: str, where: str, **values) -> str:
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError, AttributeError) as err:
        raise ClassRosError(f"info.json's {where} {template!r} cannot be filled ({err!r}).") from None


def _features(info: dict, root: Path) -> dict[str, Feature]:
    raw = info.get("features")
    if not isinstance(raw, dict) or not raw:
        raise ClassRosError(f"{root}/meta/info.json has no `features`; it is not a LeRobot dataset.")
    out = {}
    for name, ft in raw.items():
        if not isinstance(ft, dict) or "dtype" not in ft or not isinstance(ft.get("shape"), list):
            raise ClassRosError(f"{root}/meta/info.json: feature {name!r} needs a dtype and a shape list.")
        out[name] = Feature(name, str(ft["dtype"]), tuple(int(s) for s in ft["shape"]), ft.get("names"),
                            ft.get("info") or ft.get("video_info") or {})
    return out


def _tasks_v3(root: Path) -> list[str]:
    table = read_table(root / "meta" / "tasks.parquet", root)
    cols = table.column_names
    text = "task" if "task" in cols else next((c for c in cols if c != "task_index"), None)
    if "task_index" not in cols or text is None:
        raise ClassRosError(f"{root}/meta/tasks.parquet needs task_index and the task text; it has {cols}.")
    rows = dict(zip(table.column("task_index").to_pylist(), table.column(text).to_pylist()))
    return [str(rows[i]) for i in sorted(rows)]


def _episodes_v3(root: Path, info: dict, features: dict[str, Feature]) -> list[EpisodeRef]:
    import pyarrow as pa

    files = sorted((root / "meta" / "episodes").glob("*/*.parquet"))
    if not files:
        raise ClassRosError(f"{root} has no meta/episodes/chunk-*/file-*.parquet; the dataset is incomplete.")
    videos = [k for k, f in features.items() if f.dtype == VIDEO]
    need = ["episode_index", "length", "tasks", "data/chunk_index", "data/file_index"]
    for k in videos:
        need += [f"videos/{k}/chunk_index", f"videos/{k}/file_index", f"videos/{k}/from_timestamp"]
    tables = []
    for path in files:
        table = read_table(path, root)
        missing = [c for c in need if c not in table.column_names]
        if missing:
            raise ClassRosError(f"{path.relative_to(root)} lacks the columns {missing}; the episode metadata "
                                "does not match info.json's features.")
        tables.append(table.select(need))
    rows = pa.concat_tables(tables).to_pylist()
    data_path, video_path = info.get("data_path", ""), info.get("video_path") or ""
    episodes = []
    for r in rows:
        data = _fill(data_path, "data_path", chunk_index=r["data/chunk_index"], file_index=r["data/file_index"])
        vids = {}
        for k in videos:
            mp4 = _fill(video_path, "video_path", video_key=k, chunk_index=r[f"videos/{k}/chunk_index"],
                        file_index=r[f"videos/{k}/file_index"])
            vids[k] = (root / mp4, float(r[f"videos/{k}/from_timestamp"]))
        episodes.append(EpisodeRef(int(r["episode_index"]), int(r["length"]), root / data,
                                   [str(t) for t in (r["tasks"] or [])], vids))
    return sorted(episodes, key=lambda e: e.index)


def _episodes_v21(root: Path, info: dict, features: dict[str, Feature]) -> tuple[list[EpisodeRef], list[str]]:
    tasks = {int(r["task_index"]): str(r["task"]) for r in _read_jsonl(root / "meta" / "tasks.jsonl", root)}
    chunks = int(info.get("chunks_size", 1000))
    videos = [k for k, f in features.items() if f.dtype == VIDEO]
    episodes = []
    for r in _read_jsonl(root / "meta" / "episodes.jsonl", root):
        i = int(r["episode_index"])
        data = _fill(info.get("data_path", ""), "data_path", episode_chunk=i // chunks, episode_index=i)
        vids = {k: (root / _fill(info.get("video_path") or "", "video_path", episode_chunk=i // chunks,
                                 video_key=k, episode_index=i), 0.0) for k in videos}
        episodes.append(EpisodeRef(i, int(r["length"]), root / data, [str(t) for t in r.get("tasks", [])], vids))
    return sorted(episodes, key=lambda e: e.index), [tasks[i] for i in sorted(tasks)]


def read_source(path) -> LeRobotSource:
    """Read and check a LeRobot dataset's metadata; one clear sentence for anything not a v2.1 / v3 dataset."""
    root = Path(path)
    if not root.is_dir():
        raise ClassRosError(f"{root} is not a folder; give the LeRobot dataset's root (the one holding meta/).")
    if not (root / "meta" / "info.json").is_file():
        raise ClassRosError(f"{root} is not a LeRobot dataset: it has no meta/info.json.")
    info = _read_json(root / "meta" / "info.json", root)
    if not isinstance(info, dict):
        raise ClassRosError(f"{root}/meta/info.json must hold a JSON object.")
    version = str(info.get("codebase_version", "unknown"))
    major = version.lstrip("v").split(".")
    if not (major[0] == "3" or version == "v2.1"):
        raise ClassRosError(f"{root} is a LeRobot {version} dataset; only v2.1 and v3.x are read. Convert it "
                            "with LeRobot's own dataset converters (to v2.1, then v3.0) first.")
    try:
        fps = float(info["fps"])
    except (KeyError, TypeError, ValueError):
        raise ClassRosError(f"{root}/meta/info.json has no numeric fps.") from None
    if not fps > 0:
        raise ClassRosError(f"{root}/meta/info.json says fps {fps}; it must be positive.")
    features = _features(info, root)
    if version == "v2.1":
        episodes, tasks = _episodes_v21(root, info, features)
    else:
        episodes, tasks = _episodes_v3(root, info, features), _tasks_v3(root)
    if not episodes:
        raise ClassRosError(f"{root} lists no episodes.")
    return LeRobotSource(root, version, fps, info.get("robot_type"), features, episodes, tasks)

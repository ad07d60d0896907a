"""The episodic dataset store: zarr v3, episodes concatenated per key, `meta/episode_ends` as the index.

Layout (diffusion_policy's replay buffer, in zarr v3):

    DATASET/
      zarr.json                 root group; attributes hold `class_ros` metadata and the commit record
      action                    (N, D) float32
      obs/<name>                (N, H, W, 3) uint8 images, or (N, d) float32 low-dim
      meta/episode_ends         (E,) int64, exclusive end frame of each episode

      manifest.json             written last (class_ros.data.outputs): kind "dataset", complete, lineage

A dataset is written whole or not at all: `EpisodeStore.build` writes it in a hidden sibling folder and moves it
into place with its manifest once complete, and `open` (read-only) refuses a folder without that manifest.
Within a store, appending is atomic too: data arrays and `episode_ends` are written first, then the root
attribute `n_episodes` (one atomic file replace) commits the episode; anything past the committed count (left
by a process killed mid-append) is invisible to readers and trimmed by the next writer.

Usage (the one way to write a dataset; importers call exactly this):
    with EpisodeStore.build("data/lift", overwrite=False, lineage={"source": "lift.hdf5"}) as b:
        store = b.create(meta)                      # once the schema is known
        store.append_episode({"obs/agentview": imgs, "obs/joint_pos": q, "action": a})
    store = EpisodeStore.open("data/lift")          # read-only; refuses an incomplete dataset
    chunks = store.action_chunks(horizon=16)        # (N, H, D)
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from class_ros.data import outputs
from class_ros.data.schema import ACTION, EPISODE_ENDS, DatasetMeta, KeySchema
from class_ros.errors import ClassRosError

ATTR = "class_ros"
KIND = "dataset"  # the manifest kind (class_ros.data.outputs)
FORMAT_VERSION = 1
IMAGE_CHUNK_FRAMES = 8  # a random batch touches one small chunk per frame
LOW_DIM_CHUNK_FRAMES = 4096


def _compressor(kind: str) -> BloscCodec:
    # lz4 decodes at GB/s so random image reads stay fast; zstd packs the small low-dim arrays tighter.
    if kind == "image":
        return BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")
    return BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")


class EpisodeStore:
    """A zarr v3 episodic dataset; see the module docstring for the layout and the commit protocol."""

    def __init__(self, path: Path, root: zarr.Group, mode: str):
        self.path = path
        self.mode = mode
        self._root = root
        attrs = dict(root.attrs).get(ATTR)
        if not isinstance(attrs, dict) or "meta" not in attrs or "n_episodes" not in attrs:
            raise ClassRosError(f"{path} is a zarr store but not a class_ros dataset (no '{ATTR}' metadata).")
        try:
            self.meta = DatasetMeta.from_dict(attrs["meta"])
        except (TypeError, ValueError) as err:
            raise ClassRosError(f"{path}: dataset metadata is corrupted ({err}).") from err
        self._n_episodes = int(attrs["n_episodes"])
        try:
            ends = np.asarray(root[EPISODE_ENDS][: self._n_episodes], dtype=np.int64)
            self._arrays = {k: root[k] for k in self.meta.keys}
        except KeyError as err:
            raise ClassRosError(f"{path}: the array {err} named in the metadata is missing; the dataset is damaged.")
        if len(ends) != self._n_episodes:
            raise ClassRosError(f"{path}: metadata commits {self._n_episodes} episodes but episode_ends holds "
                                f"{len(ends)}; the dataset is damaged.")
        self._ends = ends
        self._cache: dict[str, np.ndarray] = {}

    # ---------------------------------------------------------------- creation and opening
    @classmethod
    @contextlib.contextmanager
    def build(cls, path: str | os.PathLike, *, overwrite: bool = False,
              lineage: dict | None = None) -> Iterator["DatasetBuilder"]:
        """Write a whole dataset at `path` or nothing: yields a DatasetBuilder (call .create(meta) once, then append).

        The dataset appears at `path` only when the block ends without an exception; `overwrite` replaces an
        existing dataset (never any other folder) at that moment. `lineage`: what it was made from (manifest).
        """
        with outputs.building(path, KIND, overwrite=overwrite, lineage=lineage, format_version=FORMAT_VERSION) as b:
            builder = DatasetBuilder(b)
            yield builder
            if builder.store is None:
                raise ClassRosError(f"no episode was written, so {path} was not created.")
            b.manifest.update(builder.store.manifest_fields())

    @classmethod
    def create(cls, path: str | os.PathLike, meta: DatasetMeta) -> "EpisodeStore":
        """Create an empty store in place (an empty or new folder); readers accept it once `finish` is called.

        Use `build` for anything a user will read: it makes the dataset appear whole or not at all.
        """
        path = Path(path)
        if ACTION not in meta.keys:
            meta.keys[ACTION] = KeySchema("float32", (meta.action_dim,), "low_dim")
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise ClassRosError(f"{path} already exists; choose another --out or pass --overwrite.")
        root = zarr.open_group(str(path), mode="w", zarr_format=3)
        for key, schema in meta.keys.items():
            frames = IMAGE_CHUNK_FRAMES if schema.kind == "image" else LOW_DIM_CHUNK_FRAMES
            root.create_array(key, shape=(0, *schema.shape), chunks=(frames, *schema.shape),
                              dtype=schema.dtype, compressors=_compressor(schema.kind), fill_value=0)
        root.create_array(EPISODE_ENDS, shape=(0,), chunks=(65536,), dtype="int64", fill_value=0)
        root.attrs[ATTR] = {"meta": meta.to_dict(), "n_episodes": 0}
        return cls(path, root, "a")

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> "EpisodeStore":
        """Open an existing store: mode "r" (read-only, for training) or "a" (append)."""
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        path = Path(path)
        if not (path / "zarr.json").is_file():
            raise ClassRosError(f"{path} is not a dataset store (no zarr.json); create one with `class-ros convert`, "
                                "`import-robomimic` or `sim-demos`.")
        try:
            root = zarr.open_group(str(path), mode="r" if mode == "r" else "r+", zarr_format=3)
        except Exception as err:  # zarr raises several types for unreadable metadata
            raise ClassRosError(f"{path}: cannot read the dataset metadata ({err}).") from err
        store = cls(path, root, mode)
        if mode == "a":
            store._trim_uncommitted()
        else:  # the writer (mode "a") works before the manifest exists; readers need a finished dataset
            outputs.read_manifest(path, KIND)
        return store

    def manifest_fields(self) -> dict:
        """What the manifest records about this store (its fingerprint ties positives and runs to it)."""
        return {"fingerprint": self.fingerprint(), "n_episodes": self.n_episodes, "n_frames": self.n_frames}

    def finish(self, lineage: dict | None = None) -> None:
        """Mark a store made in place with `create` as complete (its manifest); `build` does this itself."""
        outputs.write_manifest(self.path, KIND, format_version=FORMAT_VERSION, complete=True, lineage=lineage,
                               **self.manifest_fields())

    @classmethod
    def open_or_create(cls, path: str | os.PathLike, meta: DatasetMeta) -> "EpisodeStore":
        """Open for appending if it exists (its metadata must match `meta`'s keys), else create."""
        if Path(path, "zarr.json").is_file():
            store = cls.open(path, "a")
            store.check_compatible(meta)
            return store
        return cls.create(path, meta)

    def check_compatible(self, meta: DatasetMeta) -> None:
        """Refuse to append data whose keys, shapes or action layout differ from this store's."""
        mine = {k: (s.dtype, s.shape, s.kind) for k, s in self.meta.keys.items()}
        theirs = {k: (s.dtype, s.shape, s.kind) for k, s in meta.keys.items()}
        theirs.setdefault(ACTION, ("float32", (meta.action_dim,), "low_dim"))
        if mine != theirs or self.meta.action_names != meta.action_names or self.meta.action_kind != meta.action_kind:
            raise ClassRosError(f"{self.path} holds a different schema (keys {sorted(mine)}, actions "
                                f"{self.meta.action_names}); write to a new --out instead.")

    def _trim_uncommitted(self) -> None:
        n = self.n_frames
        for arr in self._arrays.values():
            if arr.shape[0] != n:
                arr.resize((n, *arr.shape[1:]))
        ends = self._root[EPISODE_ENDS]
        if ends.shape[0] != self._n_episodes:
            ends.resize((self._n_episodes,))

    # ---------------------------------------------------------------- sizes and access
    @property
    def n_episodes(self) -> int:
        return self._n_episodes

    @property
    def n_frames(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    @property
    def episode_ends(self) -> np.ndarray:
        """(E,) exclusive end frame of each committed episode."""
        return self._ends.copy()

    @property
    def episode_starts(self) -> np.ndarray:
        return np.concatenate([[0], self._ends[:-1]]).astype(np.int64)

    @property
    def keys(self) -> list[str]:
        return sorted(self.meta.keys)

    def array(self, key: str):
        """The array for `key`, cut to the committed frames (numpy if loaded into memory, else lazy zarr)."""
        if key in self._cache:
            return self._cache[key]
        if key not in self._arrays:
            raise ClassRosError(f"{self.path} has no key {key!r}; it has {self.keys}.")
        arr = self._arrays[key]
        return arr if arr.shape[0] == self.n_frames else _Sliced(arr, self.n_frames)

    def __getitem__(self, key: str):
        return self.array(key)

    def load(self, keys: list[str] | None = None) -> "EpisodeStore":
        """Read `keys` (default: all) into memory so sampling needs no disk access. Returns self."""
        for key in keys or self.keys:
            if key not in self._cache:
                with self._reading(key):
                    self._cache[key] = np.asarray(self._arrays[key][: self.n_frames])
        return self

    @contextlib.contextmanager
    def _reading(self, key: str):
        """Turn the codec's or the file system's error on a damaged chunk into one sentence naming the key."""
        try:
            yield
        except ClassRosError:
            raise
        except (OSError, RuntimeError, ValueError) as err:  # blosc raises RuntimeError on a corrupt chunk
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
            raise ClassRosError(f"{self.path}: cannot read {key!r} ({first}); the dataset is damaged, write it "
                                "again (convert / import).") from None

    def read(self, key: str, idx: np.ndarray) -> np.ndarray:
        """Frames `idx` (any order, repeats allowed) of `key`, reading each needed chunk once."""
        idx = np.asarray(idx, dtype=np.int64)
        src = self.array(key)
        if isinstance(src, np.ndarray):
            return src[idx]
        uniq, inverse = np.unique(idx, return_inverse=True)
        arr = src.array if isinstance(src, _Sliced) else src
        with self._reading(key):
            return np.asarray(arr.get_orthogonal_selection((uniq,)))[inverse.reshape(idx.shape)]

    def episode(self, i: int) -> dict[str, np.ndarray]:
        """All keys of episode `i` as numpy arrays."""
        if not 0 <= i < self.n_episodes:
            raise IndexError(f"episode {i} out of range (the store has {self.n_episodes})")
        start, end = int(self.episode_starts[i]), int(self._ends[i])
        out = {}
        for k in self.keys:
            with self._reading(k):
                out[k] = np.asarray(self.array(k)[start:end])
        return out

    def episode_of(self, frames: np.ndarray) -> np.ndarray:
        """Episode index of each global frame index."""
        return np.searchsorted(self._ends, np.asarray(frames), side="right")

    # ---------------------------------------------------------------- writing
    def append_episode(self, data: dict[str, np.ndarray]) -> int:
        """Append one episode atomically; returns its index. Every key of the schema is required."""
        if self.mode != "a":
            raise ClassRosError(f"{self.path} is open read-only; open it with mode='a' to append.")
        missing = set(self.meta.keys) - set(data)
        extra = set(data) - set(self.meta.keys)
        if missing or extra:
            raise ClassRosError(f"episode keys do not match the dataset schema: missing {sorted(missing)}, "
                                f"unexpected {sorted(extra)}.")
        lengths = {k: len(v) for k, v in data.items()}
        length = lengths[ACTION]
        if length == 0 or any(n != length for n in lengths.values()):
            raise ClassRosError(f"episode keys must have the same non-zero length, got {lengths}.")
        arrays = {}
        for key, value in data.items():
            schema = self.meta.keys[key]
            value = np.asarray(value)
            if value.shape[1:] != schema.shape:
                raise ClassRosError(f"key {key!r} has frames of shape {value.shape[1:]}, the dataset expects {schema.shape}.")
            if schema.kind == "image" and value.dtype != np.uint8:
                raise ClassRosError(f"image key {key!r} must be uint8, got {value.dtype}.")
            value = value.astype(schema.dtype, copy=False)
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                bad = int(np.argwhere(~np.isfinite(value.reshape(len(value), -1)).all(axis=1))[0, 0])
                raise ClassRosError(f"key {key!r} has a non-finite value at frame {bad} of the new episode; "
                                    "nothing was written.")
            arrays[key] = value
        start = self.n_frames
        end = start + length
        for key, value in arrays.items():  # 1. data past the committed end: invisible until step 3
            arr = self._arrays[key]
            arr.resize((end, *arr.shape[1:]))
            arr[start:end] = value
        ends = self._root[EPISODE_ENDS]  # 2. the index entry, also past the committed count
        ends.resize((self._n_episodes + 1,))
        ends[self._n_episodes] = end
        attrs = dict(self._root.attrs[ATTR])  # 3. commit: one atomic replace of the root zarr.json
        attrs["n_episodes"] = self._n_episodes + 1
        self._root.attrs[ATTR] = attrs
        self._n_episodes += 1
        self._ends = np.append(self._ends, end)
        self._cache.clear()
        return self._n_episodes - 1

    # ---------------------------------------------------------------- checks
    def validate(self) -> None:
        """Check episode_ends, lengths, dtypes and finiteness; raise one ClassRosError naming key and episode."""
        ends = self._ends
        if len(ends) and (ends[0] <= 0 or np.any(np.diff(ends) <= 0)):
            bad = 0 if ends[0] <= 0 else int(np.argmax(np.diff(ends) <= 0)) + 1
            raise ClassRosError(f"{self.path}: meta/episode_ends is not strictly increasing at episode {bad}.")
        for key, schema in self.meta.keys.items():
            arr = self._arrays[key]
            if arr.shape[0] < self.n_frames:
                raise ClassRosError(f"{self.path}: key {key!r} has {arr.shape[0]} frames but the episodes need "
                                    f"{self.n_frames}.")
            if tuple(arr.shape[1:]) != schema.shape or np.dtype(arr.dtype) != np.dtype(schema.dtype):
                raise ClassRosError(f"{self.path}: key {key!r} is {arr.dtype} {tuple(arr.shape[1:])}, the metadata "
                                    f"says {schema.dtype} {schema.shape}.")
            if np.dtype(schema.dtype).kind != "f":
                continue
            starts = self.episode_starts
            for e in range(self.n_episodes):
                with self._reading(key):
                    block = np.asarray(arr[starts[e]: ends[e]])
                if not np.isfinite(block).all():
                    frame = int(np.argwhere(~np.isfinite(block.reshape(len(block), -1)).all(axis=1))[0, 0])
                    raise ClassRosError(f"{self.path}: key {key!r} has a non-finite value in episode {e} "
                                        f"(frame {frame} of that episode).")

    def fingerprint(self) -> str:
        """A short hash of the metadata and episode index, to tie checkpoints to the data they were trained on."""
        h = hashlib.sha256(json.dumps(self.meta.to_dict(), sort_keys=True).encode())
        h.update(self._ends.tobytes())
        actions = self.array(ACTION)
        with self._reading(ACTION):
            h.update(np.ascontiguousarray(actions[: min(self.n_frames, 4096)]).tobytes())
        return h.hexdigest()[:16]

    def action_chunks(self, horizon: int) -> np.ndarray:
        """(N, H, D) the action chunk a[t : t+H] following every frame, last action repeated at episode ends."""
        from class_ros.data.sampler import action_chunk_indices
        idx = action_chunk_indices(self._ends, np.arange(self.n_frames), horizon)
        return np.asarray(self.load([ACTION]).array(ACTION))[idx]


class DatasetBuilder:
    """What `EpisodeStore.build` yields: `create(meta)` makes the store (in the hidden folder) once."""

    def __init__(self, building: outputs.Building):
        self._building = building
        self.store: EpisodeStore | None = None

    @property
    def path(self):
        """The hidden folder being written: put any extra files (a report) here before the block ends."""
        return self._building.path

    @property
    def lineage(self) -> dict:
        """The manifest's lineage dict; add to it while writing (e.g. the sources actually used)."""
        return self._building.lineage

    def create(self, meta: DatasetMeta) -> EpisodeStore:
        """The empty store with `meta`'s schema; append episodes to it."""
        assert self.store is None, "create the store once per build"
        self.store = EpisodeStore.create(self._building.path, meta)
        return self.store


class _Sliced:
    """A zarr array seen through its first `n` frames (past them lies uncommitted data)."""

    def __init__(self, array, n: int):
        self.array, self.n = array, n
        self.shape = (n, *array.shape[1:])
        self.dtype = array.dtype

    def __len__(self):
        return self.n

    def __getitem__(self, item):
        if isinstance(item, slice):
            start, stop, step = item.indices(self.n)
            return self.array[start:stop:step]
        if isinstance(item, (int, np.integer)):
            if not -self.n <= item < self.n:
                raise IndexError(item)
            return self.array[item % self.n]
        raise TypeError("use EpisodeStore.read for fancy indexing")

    def __array__(self, dtype=None, copy=None):
        out = np.asarray(self.array[: self.n])
        return out if dtype is None else out.astype(dtype)

"""Retrieval ("non-parametric") control, docs/method.md section 3: kNN over CLASS embeddings of the demonstrations.

An index lives in a pre-training run's `index/` folder (built by `class-ros index`):
    index/faiss.index   the faiss index of L2-normalised observation features (faiss's own format)
    index/data.npz      chunks (N, H, D) float32 unnormalised action chunks aligned with the index rows
                        (relative_dims' entries as offsets from the row's measured joints, see `relative`),
                        frames (N,) and episodes (N,) of each row
    index/index.json    RetrievalConfig, kind of index, recall@k measured at build time, dataset fingerprint

    policy = RetrievalPolicy.load("runs/class")
    chunk = policy.predict_action_chunk({"agentview": img, "joint_pos": q})   # (H, D)
    policy.last_confidence.nearest_distance   # 1 - cos to the closest demonstration frame
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from class_ros.config import DictConfig
from class_ros.errors import ClassRosError

INDEX_DIR = "index"
INDEX_KIND = "index"  # its manifest kind (class_ros.data.outputs)
MODES = ("mean", "sample")


@dataclass
class RetrievalConfig(DictConfig):
    """Query and index settings; stored in index/index.json, overridable when loading the policy."""

    config_name = "retrieval"

    k: int = 64  # neighbours
    tau: float = 0.01  # softmax temperature over cosine distances (0.02 for moving cameras)
    # Weight of the proprio part against the unit-norm image part of the feature (see retrieval_features).
    # 4.0: on the lift demo it beat 0.5-2.0 (leave-one-episode-out chunk error and success rate).
    proprio_weight: float = 4.0
    # {camera: weight}: each camera's features are scaled to unit norm, then by its weight (cameras not named
    # weigh 1). Empty: the cameras' features are scaled together, as one vector (a camera with larger
    # features counts more).
    view_weights: dict = field(default_factory=dict)
    mode: str = "mean"  # "mean": weighted mean chunk; "sample": one chunk drawn by weight
    n_action_steps: int = 8  # steps executed per chunk before re-querying
    # Arm joint targets replayed relative to where the arm is: each neighbour's targets minus the joint positions
    # measured at its frame, plus the query's measured ones (joint_position actions whose names are proprio
    # joints; a gripper, any name containing "gripper", stays absolute). A neighbour whose wrist camera saw the
    # cube at the same offset from the hand then moves the hand by that offset, wherever the cube is, instead
    # of to where its own cube was. The demo turns it on (a scene camera that moves, the wrist camera weighted
    # 4x): CLASS retrieval on lift, fixed / heldout / moving, 100 episodes each, absolute 66, 63, 66 %,
    # relative 85, 91, 91 %. With a scene camera that never moves (cameras together) its image fixes where
    # the cube is and absolute targets did better: 56/70 against 48/70 (46/70 relative with wrist 4).
    relative: bool = False
    approx_threshold: int = 50_000  # above this many rows, an HNSW index replaces exact search
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 256

    def __post_init__(self):
        if self.k < 1 or self.tau <= 0 or self.n_action_steps < 1 or self.proprio_weight < 0:
            raise ClassRosError(f"retrieval needs k >= 1, tau > 0, n_action_steps >= 1 and proprio_weight >= 0; "
                                f"got k={self.k}, tau={self.tau}, n_action_steps={self.n_action_steps}, "
                                f"proprio_weight={self.proprio_weight}.")
        if not isinstance(self.view_weights, dict) or not all(
                isinstance(w, (int, float)) and 0 <= w < np.inf for w in self.view_weights.values()):
            raise ClassRosError(f"retrieval view_weights must map camera names to finite weights >= 0; got "
                                f"{self.view_weights!r}.")
        if self.mode not in MODES:
            raise ClassRosError(f"retrieval mode {self.mode!r} is not one of {MODES}.")


# Settings baked into the stored index rows: changing one needs a rebuild, not a load-time override.
BUILD_FIELDS = ("proprio_weight", "view_weights", "relative", "approx_threshold", "hnsw_m", "ef_construction")


def stored_config(saved: dict, folder, overrides: dict) -> RetrievalConfig:
    """The RetrievalConfig of a saved index with query-time `overrides` on top.

    Migration: indexes written before `proprio_weight` existed hold features of another form; they are
    refused with the command that rebuilds them. An override of a setting the rows were built with is
    refused too (the query features would no longer match the stored rows).
    """
    rebuild = f"rebuild it with `class-ros index --run {Path(folder).parent} --dataset DATASET`"
    if "proprio_weight" not in saved:
        raise ClassRosError(f"{folder} was built by an older class_ros whose index features differ; {rebuild}.")
    saved = {"relative": False, **saved}  # indexes from before `relative` hold absolute chunks
    changed = [k for k in BUILD_FIELDS if k in overrides and overrides[k] != saved.get(k)]
    if changed:
        was = ", ".join(f"{k}={saved.get(k)}" for k in changed)
        raise ClassRosError(f"{', '.join(changed)} cannot change when loading: the index rows were built with "
                            f"{was}; {rebuild}, giving the new value there.")
    return RetrievalConfig.from_dict({**saved, **overrides})


def view_scales(config: RetrievalConfig, cameras: list[str]) -> list[float] | None:
    """The weight of each of the encoder's `cameras` (in its order), or None: the cameras scaled together."""
    if not config.view_weights:
        return None
    unknown = sorted(set(config.view_weights) - set(cameras))
    if unknown:
        raise ClassRosError(f"retrieval view_weights name cameras {unknown} that the encoder does not have; it has "
                            f"{list(cameras)}.")
    scales = [float(config.view_weights.get(cam, 1.0)) for cam in cameras]
    if not any(scales):
        raise ClassRosError(f"retrieval view_weights {config.view_weights} give every camera weight 0.")
    return scales


def relative_dims(meta: dict, proprio_keys: list[str]) -> list[tuple[int, int]]:
    """(action dim, proprio dim) pairs that `relative` replays as offsets: joint_position actions named like
    a joint of the encoder's one proprio key, except a gripper. `meta`: the run's metadata (action_kind,
    action_names, joint_names: the proprio key's dims), the same at index build and at load."""
    if len(proprio_keys) != 1 or meta.get("action_kind") != "joint_position":
        return []
    joints = list(meta.get("joint_names") or [])
    return [(a, joints.index(name)) for a, name in enumerate(meta.get("action_names") or [])
            if name in joints and "gripper" not in name.lower()]


@dataclass
class RetrievalConfidence:
    """How familiar the last observation looked: the robot side can stop on out-of-distribution inputs."""

    nearest_distance: float  # 1 - cos to the closest stored observation (0 = seen exactly)
    weight_entropy: float  # entropy (nats) of the neighbour weights; log(k) = no neighbour stands out
    nearest_frame: int  # dataset frame of the closest neighbour
    k: int


# ------------------------------------------------------------------------------------------ faiss helpers
def normalize_rows(x: np.ndarray) -> np.ndarray:
    """(N, E) -> (N, E) float32 with unit L2 rows (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norm, 1e-12), dtype=np.float32)


def retrieval_features(raw: np.ndarray, image_dim: int, proprio_weight: float,
                       camera_scales: list[float] | None = None) -> np.ndarray:
    """(N, F) encoder outputs (image features, then normalised proprio) -> (N, F) unit rows for the index.

    The image part is scaled to unit norm and the proprio part to `proprio_weight` times its RMS value, so
    the balance between "what the camera sees" and "where the arm is" is a setting, not an accident of the
    encoder's output scale (unweighted, the proprio part dominated and neighbours matched arm pose only).
    `camera_scales` (one weight per camera, from `view_scales()`): each camera's equal share of the image
    part is first scaled to unit norm times its weight.
    """
    raw = np.asarray(raw, dtype=np.float32).reshape(len(raw), -1)
    image, proprio = raw[:, :image_dim], raw[:, image_dim:]
    if camera_scales is not None:
        views = np.split(image, len(camera_scales), axis=1)
        image = np.concatenate([normalize_rows(v) * w for v, w in zip(views, camera_scales)], axis=1)
    if proprio.shape[1]:
        proprio = proprio * (proprio_weight / np.sqrt(proprio.shape[1]))
    return normalize_rows(np.concatenate([normalize_rows(image), proprio], axis=1))


def build_faiss_index(emb: np.ndarray, cfg: RetrievalConfig):
    """(index, kind): exact inner product up to cfg.approx_threshold rows, HNSW above. emb: (N, E) unit rows."""
    import faiss

    n, e = emb.shape  # rows, feature width
    if n <= cfg.approx_threshold:
        index, kind = faiss.IndexFlatIP(e), "flat"
    else:
        index, kind = faiss.IndexHNSWFlat(e, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT), "hnsw"
        index.hnsw.efConstruction = cfg.ef_construction
        index.hnsw.efSearch = cfg.ef_search
    index.add(emb)
    return index, kind


def recall_at_k(index, emb: np.ndarray, k: int, n_queries: int = 256, seed: int = 0) -> float:
    """Fraction of the exact top-k (flat inner product) that `index` returns, on stored rows as queries."""
    import faiss

    rng = np.random.default_rng(seed)
    k = min(k, len(emb))
    q = emb[rng.choice(len(emb), size=min(n_queries, len(emb)), replace=False)]
    exact = faiss.IndexFlatIP(emb.shape[1])
    exact.add(emb)
    _, want = exact.search(q, k)
    _, got = index.search(q, k)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(want, got)]))


def to_gpu_if_possible(index, device: str):
    """Move a flat index to GPU faiss when `device` is CUDA and this faiss build has GPUs; else unchanged."""
    import faiss

    if not str(device).startswith("cuda") or not hasattr(faiss, "StandardGpuResources"):
        return index
    if faiss.get_num_gpus() < 1 or not isinstance(index, faiss.IndexFlat):
        return index
    return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)


@contextlib.contextmanager
def single_thread_search():
    """One OpenMP thread inside: for one query at a time, faiss's thread start-up costs more than the search
    (measured 10-30x slower p50 with 2 threads on a busy 2-core machine)."""
    try:
        import faiss
    except ImportError:  # searches without faiss (torch on a GPU machine) have no OpenMP pool to limit
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def save_index(run, index, chunks: np.ndarray, frames: np.ndarray, episodes: np.ndarray, info: dict) -> Path:
    """Write index/ into the run directory (faiss format + npz + JSON), whole or not at all, checksummed.

    Its manifest's lineage names the run (id and encoder checksum), so an index copied from another run, or
    left from before the run trained further, is refused on load.
    """
    import faiss

    from class_ros.data import outputs

    folder = Path(run.path) / INDEX_DIR
    with outputs.building(folder, INDEX_KIND, overwrite=True, lineage=index_lineage(run)) as b:
        outputs.write_bytes(b.path / "faiss.index", faiss.serialize_index(index).tobytes())
        buf = io.BytesIO()
        np.savez(buf, chunks=chunks.astype(np.float32), frames=frames.astype(np.int64),
                 episodes=episodes.astype(np.int64))
        outputs.write_bytes(b.path / "data.npz", buf.getvalue())
        outputs.write_json(b.path / "index.json", info, sort_keys=True)
    for name in ("faiss.index", "data.npz", "index.json"):
        run.record_file(folder / name, write=False)
    run.update_meta()
    return folder


def index_lineage(run) -> dict:
    """What ties an index to its run: the run's id and the encoder weights it embedded with."""
    weights = run.meta.get("files", {}).get("encoder.safetensors", {})
    return {"run_id": run.meta.get("run_id"), "encoder_sha256": weights.get("sha256")}


# ------------------------------------------------------------------------------------------ the policy
class RetrievalPolicy:
    """Weighted kNN over demonstration frames: softmax(-d / tau) over the k nearest, d = 1 - cos."""

    def __init__(self, encoder, index, chunks: np.ndarray, frames: np.ndarray, config: RetrievalConfig,
                 meta: dict, device: str = "cpu", seed: int = 0):
        self.encoder = encoder.eval()
        self.index = index
        self.chunks = chunks  # (N, H, D) unnormalised
        self.frames = frames  # (N,)
        self.config = config
        # Checked once here (cameras the encoder lacks are refused at load), applied to every query.
        self.camera_scales = view_scales(config, encoder.config.image_keys)
        self.device = device
        self.action_names = list(meta.get("action_names", []))
        self.action_kind = meta.get("action_kind", "other")
        self.joint_names = list(meta.get("joint_names", []))
        self.control_rate_hz = float(meta.get("control_rate_hz", 10.0))
        self.n_action_steps = config.n_action_steps
        self.horizon = chunks.shape[1]
        proprio = encoder.config.proprio_keys
        self.proprio_key = proprio[0] if len(proprio) == 1 else None
        # (action dim, proprio dim) pairs stored as offsets (config.relative); the query adds its joints.
        self.relative_dims = relative_dims(meta, proprio) if config.relative else []
        self.last_confidence: RetrievalConfidence | None = None
        self._seed = seed
        self._rng = np.random.default_rng(seed)

    @classmethod
    def load(cls, run_dir: str | os.PathLike, device: str = "cpu", allow_partial: bool = False,
             **overrides) -> "RetrievalPolicy":
        """Load the EMA encoder and the index of a pre-training run; `overrides` change RetrievalConfig fields."""
        import faiss

        from class_ros.data import outputs
        from class_ros.data.rundir import RunDir
        from class_ros.encoder.model import load_encoder

        run = RunDir.open(run_dir, "encoder")
        run.check_finished(allow_partial)
        folder = run.path / INDEX_DIR
        if not folder.is_dir():
            raise ClassRosError(f"{run.path} has no retrieval index; build it with `class-ros index --run "
                                f"{run.path} --dataset DATASET`.")
        made_from = outputs.read_manifest(folder, INDEX_KIND)["lineage"]
        if made_from != index_lineage(run):
            what = ("another run" if made_from.get("run_id") != run.meta.get("run_id")
                    else "other encoder weights than the run now holds (was it trained further?)")
            raise ClassRosError(f"{folder} was built from {what}; rebuild it with `class-ros index --run "
                                f"{run.path} --dataset DATASET`.")
        info = json.loads(run.read_checked(folder / "index.json"))
        config = stored_config(info["config"], folder, overrides)
        encoder = load_encoder(run, allow_partial=allow_partial)
        index = faiss.deserialize_index(np.frombuffer(run.read_checked(folder / "faiss.index"), dtype=np.uint8))
        if isinstance(index, faiss.IndexHNSW):
            index.hnsw.efSearch = max(config.ef_search, config.k)
        with np.load(io.BytesIO(run.read_checked(folder / "data.npz")), allow_pickle=False) as data:
            chunks, frames = data["chunks"], data["frames"]
        if index.ntotal != len(chunks):
            raise ClassRosError(f"{folder}: the index holds {index.ntotal} rows but data.npz {len(chunks)}; rebuild "
                                "it with `class-ros index`.")
        return cls(encoder.to(device), to_gpu_if_possible(index, device), chunks, frames, config, run.meta,
                   device=device)

    def reset(self) -> None:
        """Start of an episode: forget the last confidence, restart the sampling stream."""
        self.last_confidence = None
        self._rng = self.new_episode_state()

    def new_episode_state(self) -> np.random.Generator:
        """What one episode's chunks depend on besides its observations: the sampling stream ("sample" mode)."""
        return np.random.default_rng(self._seed)

    def embed(self, obs: dict) -> np.ndarray:
        """One observation {camera: (H, W, 3) uint8, proprio: (d,)} -> (F,) unit-norm float32 feature
        (retrieval_features of the encoder output, as the index rows are)."""
        return self.embed_batch([obs])[0]

    def embed_batch(self, observations: list[dict]) -> np.ndarray:
        """B observations -> (B, F) unit-norm float32 features, in one encoder forward pass."""
        import torch

        cfg = self.encoder.config
        batch = {}
        for name in cfg.image_keys + cfg.proprio_keys:  # other entries of the observation are not used
            for obs in observations:
                if name not in obs:
                    raise ClassRosError(f"the observation has no {name!r}; the run's encoder needs "
                                        f"{cfg.image_keys + cfg.proprio_keys}, got {sorted(obs)}.")
            batch[name] = torch.as_tensor(np.stack([np.asarray(obs[name]) for obs in observations])).to(self.device)
        with torch.no_grad():
            feat = self.encoder(batch).float().cpu().numpy()  # (B, F)
        if not np.isfinite(feat).all():
            raise ClassRosError("the observation produced a non-finite embedding; check the image and joint state.")
        return retrieval_features(feat, self.encoder.image_dim, self.config.proprio_weight, self.camera_scales)

    def predict_action_chunks(self, observations: list[dict], states: list[np.random.Generator]) -> np.ndarray:
        """B observations (one per episode, each with its episode's new_episode_state) -> (B, H, D) chunks,
        embedded in one forward pass; last_confidence is the last row's."""
        feats = self.embed_batch(observations)
        return np.stack([self.predict_from_embedding(f, rng, obs.get(self.proprio_key))
                         for f, rng, obs in zip(feats, states, observations)])

    def predict_from_embedding(self, feature: np.ndarray, rng: np.random.Generator | None = None,
                               joints: np.ndarray | None = None) -> np.ndarray:
        """(F,) feature (normalised here) -> (H, D) float32 action chunk; updates last_confidence.
        `rng`: the episode's sampling stream (default: the one reset() started). `joints`: the proprio joint
        positions measured with the observation, which a relative index (relative_dims) replays its chunks from."""
        q = normalize_rows(np.asarray(feature, dtype=np.float32).reshape(1, -1))
        if q.shape[1] != self.index.d:
            raise ClassRosError(f"the embedding has {q.shape[1]} values but the index holds {self.index.d}-d "
                                "features; embed with the same run the index belongs to.")
        k = min(self.config.k, len(self.chunks))
        with single_thread_search():
            sims, ids = self.index.search(q, k)
        keep = ids[0] >= 0  # approximate indexes may return fewer than k
        ids, dist = ids[0][keep], 1.0 - sims[0][keep].astype(np.float64)
        logits = -dist / self.config.tau
        w = np.exp(logits - logits.max())
        w /= w.sum()
        entropy = float(-(w * np.log(np.maximum(w, 1e-300))).sum())
        self.last_confidence = RetrievalConfidence(nearest_distance=float(dist.min()), weight_entropy=entropy,
                                                   nearest_frame=int(self.frames[ids[np.argmin(dist)]]), k=len(ids))
        if self.config.mode == "sample":
            chunk = self.chunks[ids[(self._rng if rng is None else rng).choice(len(ids), p=w)]].astype(np.float32)
        else:
            chunk = np.tensordot(w, self.chunks[ids].astype(np.float64), axes=1).astype(np.float32)
        return self._from_here(chunk, joints)

    def _from_here(self, chunk: np.ndarray, joints) -> np.ndarray:
        """A relative index's chunk (offsets in relative_dims) -> absolute targets from the measured `joints`."""
        if not self.relative_dims:
            return chunk
        dims, joint = (list(d) for d in zip(*self.relative_dims))
        n = max(joint) + 1
        q = None if joints is None else np.asarray(joints, dtype=np.float32).reshape(-1)
        if q is None or len(q) < n or not np.isfinite(q[joint]).all():
            got = "none" if q is None else f"{len(q)} values" + ("" if len(q) < n else " (not all finite)")
            raise ClassRosError(f"this index replays joint targets relative to the measured joints (relative: true) "
                                f"and needs the {n} finite joint positions of {self.proprio_key!r} with each query; "
                                f"got {got}.")
        chunk[:, dims] += q[joint]
        return chunk

    def predict_action_chunk(self, obs: dict) -> np.ndarray:
        """One observation -> (H, D) unnormalised np.float32 action chunk."""
        return self.predict_from_embedding(self.embed(obs), joints=obs.get(self.proprio_key))


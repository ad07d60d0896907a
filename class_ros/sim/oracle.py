"""Privileged-state ceilings: how well a policy can do when it is handed the true object pose.

A learned policy's success rate means little without the ceiling beside it: the same execution path
(chunks, steps per chunk, the simulator) driven by the state the image is supposed to reveal. Two
ceilings, built from scripted demonstrations of the same scenes the image dataset was recorded from
(same task, seed and seed stream as `class-ros sim-demos`):

    demos = expert_demos("lift", episodes=80, seed=0)                 # states, actions, episode ends
    oracle = OracleRetrievalPolicy(demos)                              # kNN over (object state, joints)
    evaluate_policy(oracle, "lift", "heldout", episodes=50, seed=...)  # training/evaluate.py's loop
    write_state_dataset(demos, "runs/bench/oracle_data")               # for `finetune --init none`: oracle-dp

The state is `PRIVILEGED` (ArmEnv.privileged_state: cube centre (3), goal xy (2, zeros for lift)) next to
`joint_pos`; every ArmEnv observation carries it, and image policies ignore it. The cube's yaw is left
out: with cos/sin of 4x the yaw in the features the retrieval ceiling on lift fell from 20/20 to 15/20
(the expert's grasp yaw also depends on the arm's own yaw, so matching it pulled in worse neighbours).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from class_ros.data.schema import ACTION, DatasetMeta, KeySchema, obs_key
from class_ros.errors import ClassRosError

PRIVILEGED = "privileged_state"
JOINTS = "joint_pos"
DEMO_STREAM = 0  # the seed stream `class-ros sim-demos` draws its episodes from


@dataclass
class ExpertDemos:
    """Scripted demonstrations as arrays: per-frame state and joints, the action after each frame."""

    state: np.ndarray  # (N, S) privileged state per frame
    joints: np.ndarray  # (N, 7) joint positions per frame
    actions: np.ndarray  # (N, 7) the expert's action at each frame
    episode_ends: np.ndarray  # (E,) exclusive end frame of each episode
    task: str
    control_rate_hz: float

    @classmethod
    def from_store(cls, store, task: str) -> "ExpertDemos":
        """The demonstrations of a state dataset written by `write_state_dataset`."""
        n = store.n_frames
        return cls(np.asarray(store.array(obs_key(PRIVILEGED))[:n]), np.asarray(store.array(obs_key(JOINTS))[:n]),
                   np.asarray(store.array(ACTION)[:n]), np.asarray(store.episode_ends), task,
                   store.meta.control_rate_hz)

    def chunks(self, horizon: int) -> np.ndarray:
        """(N, H, 7) the actions a[t : t+H] after every frame, the episode's last action repeated at its end."""
        out = np.empty((len(self.actions), horizon, self.actions.shape[1]), np.float32)
        start = 0
        for end in self.episode_ends:
            t = np.arange(start, end)
            idx = np.minimum(t[:, None] + np.arange(horizon)[None], end - 1)  # (T, H)
            out[start:end] = self.actions[idx]
            start = end
        return out


def expert_demos(task: str, episodes: int, seed: int = 0, progress: bool = False) -> ExpertDemos:
    """Run the scripted expert on the scenes `class-ros sim-demos --seed seed` records (successful ones kept)."""
    from tqdm import tqdm

    from class_ros.sim.env import ArmEnv, episode_seed
    from class_ros.sim.expert import make_expert

    states, joints, actions, ends = [], [], [], []
    bar = tqdm(total=episodes, desc=f"oracle demos {task}", unit="ep", disable=not progress)
    with ArmEnv(task, render_images=False) as env:
        tried = 0
        while len(ends) < episodes and tried < 2 * episodes + 10:
            ep_seed = episode_seed(seed, tried, DEMO_STREAM)
            tried += 1
            obs = env.reset(ep_seed)
            expert = make_expert(task, np.random.default_rng([ep_seed, 1]))  # as sim-demos seeds it
            s, q, a, done, info = [], [], [], False, {"success": False}
            while not done:
                action = expert.act(env)
                s.append(obs[PRIVILEGED])
                q.append(obs[JOINTS])
                a.append(action)
                obs, _, done, info = env.step(action)
            if info["success"]:
                states += s
                joints += q
                actions += a
                ends.append(len(actions))
                bar.update(1)
        rate = env.control_rate_hz
    bar.close()
    if not ends:
        raise ClassRosError(f"the scripted expert succeeded in none of {tried} {task} episodes.")
    return ExpertDemos(np.asarray(states, np.float32), np.asarray(joints, np.float32),
                       np.asarray(actions, np.float32), np.asarray(ends, np.int64), task, rate)


class OracleRetrievalPolicy:
    """kNN over (privileged state, joints) with the retrieval policy's weighting: softmax(-d / tau) over the
    k nearest demonstration frames, then the weighted mean chunk.

    Each dimension is standardised over the demonstrations; the state part counts `state_weight` times
    the joints (where the object is decides the grasp; the arm pose only says how far along it is).
    """

    def __init__(self, demos: ExpertDemos, k: int = 4, tau: float = 0.1, state_weight: float = 10.0,
                 horizon: int = 16, n_action_steps: int = 8):
        if k < 1 or tau <= 0 or state_weight < 0:
            raise ClassRosError(f"oracle retrieval needs k >= 1, tau > 0, state_weight >= 0; got {k}, {tau}, "
                                f"{state_weight}.")
        raw = np.concatenate([demos.state, demos.joints], axis=1).astype(np.float64)  # (N, S + 7)
        self.mean, self.scale = raw.mean(0), np.maximum(raw.std(0), 1e-6)
        self.weights = np.concatenate([np.full(demos.state.shape[1], state_weight), np.ones(demos.joints.shape[1])])
        self.rows = self._features(raw)  # (N, F)
        self.chunks = demos.chunks(horizon)  # (N, H, 7)
        self.k, self.tau = min(k, len(self.rows)), tau
        self.n_action_steps = n_action_steps
        self.control_rate_hz = demos.control_rate_hz
        self.action_names = [f"a{i}" for i in range(demos.actions.shape[1])]
        self.action_kind, self.joint_names = "joint_position", []

    def _features(self, raw: np.ndarray) -> np.ndarray:
        return (raw - self.mean) / self.scale * self.weights

    def reset(self) -> None:
        """Nothing is carried between chunks."""

    def new_episode_state(self) -> None:
        """Nothing is kept per episode (the interface evaluation uses to run several envs)."""
        return None

    def predict_action_chunks(self, observations: list[dict], states: list) -> np.ndarray:
        """B observations -> (B, H, 7) chunks, each as predict_action_chunk answers it alone."""
        return np.stack([self.predict_action_chunk(obs) for obs in observations])

    def predict_action_chunk(self, obs: dict) -> np.ndarray:
        """{PRIVILEGED: (S,), "joint_pos": (7,), ...} -> (H, 7) float32 chunk."""
        if PRIVILEGED not in obs or JOINTS not in obs:
            raise ClassRosError(f"the oracle needs {PRIVILEGED!r} and {JOINTS!r} in the observation (ArmEnv gives "
                                f"them); got {sorted(obs)}.")
        q = self._features(np.concatenate([obs[PRIVILEGED], obs[JOINTS]]).astype(np.float64)[None])[0]
        dist = np.linalg.norm(self.rows - q, axis=1)
        ids = np.argpartition(dist, self.k - 1)[: self.k]
        logits = -dist[ids] / self.tau
        w = np.exp(logits - logits.max())
        w /= w.sum()
        return np.tensordot(w, self.chunks[ids].astype(np.float64), axes=1).astype(np.float32)


def write_state_dataset(demos: ExpertDemos, path: str | os.PathLike):
    """The demonstrations as a dataset store without images (obs/privileged_state, obs/joint_pos, action),
    for a Diffusion Policy on the true state (`class-ros finetune --init none`); returns the store."""
    from class_ros.data.store import EpisodeStore
    from class_ros.sim.robot import JOINT_NAMES

    meta = DatasetMeta(control_rate_hz=demos.control_rate_hz, action_names=list(JOINT_NAMES),
                       action_kind="joint_position", joint_names=list(JOINT_NAMES), source=f"oracle:{demos.task}",
                       keys={obs_key(PRIVILEGED): KeySchema("float32", (demos.state.shape[1],)),
                             obs_key(JOINTS): KeySchema("float32", (demos.joints.shape[1],)),
                             ACTION: KeySchema("float32", (demos.actions.shape[1],))})
    lineage = {"oracle": {"task": demos.task, "episodes": int(len(demos.episode_ends))}}
    with EpisodeStore.build(path, overwrite=True, lineage=lineage) as b:
        store = b.create(meta)
        start = 0
        for end in demos.episode_ends:
            store.append_episode({obs_key(PRIVILEGED): demos.state[start:end],
                                  obs_key(JOINTS): demos.joints[start:end], ACTION: demos.actions[start:end]})
            start = end
    return EpisodeStore.open(path)

"""EnvPool: ArmEnvs in worker processes, one renderer each, driven by one caller that holds the policy.

    with EnvPool(n=4, task="lift", camera="heldout") as pool:
        pool.send(0, "reset", seed_a)                        # every command returns at once ...
        pool.send(1, "run", chunk_b)                         # ... (a chunk: (n, 7) actions)
        for slot, steps in pool.results():                   # ... and its Steps arrive when done
            ...

The caller (evaluation) queries the policy for whichever slots have a fresh observation (on CUDA all of
them in one forward pass) and sends each chunk on at once, so the policy's work overlaps the other
slots' physics and rendering. Each slot is a plain ArmEnv: everything it does depends on its reset seed
alone, so an episode gives the same result in whichever slot, and next to whichever others, it runs.
Workers are spawned (never forked: the caller may hold torch threads or a GL context) and ignore SIGINT,
so Ctrl-C reaches only the caller, which closes the pool (stopping the workers) on its way out.
"""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass

import numpy as np

from class_ros.errors import ClassRosError


def available_cores() -> int:
    """CPU cores this process may run on (the default number of workers)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class Steps:
    """What one chunk did in a slot: the last observation, whether the episode ended, and its info."""

    obs: dict
    done: bool
    info: dict
    steps: int  # the env's control steps since reset
    sim_time: float
    frames: list  # every observation's image along the chunk, when asked for (videos)


def run_chunk(env, actions: np.ndarray, keep_frames: bool = False) -> Steps:
    """Execute `actions` (n, 7) in `env` until the episode ends; the one place the action loop lives."""
    frames, obs, done, info = [], None, False, {"success": False}
    for action in actions:
        obs, _, done, info = env.step(action)
        if keep_frames:
            frames.append(obs["agentview"])
        if done:
            break
    return Steps(obs, done, info, env.steps, env.sim_time, frames)


def reset_episode(env, seed: int, keep_frames: bool = False) -> Steps:
    """Reset `env` with `seed`: the Steps an episode starts from (its first image in frames, for videos)."""
    obs = env.reset(seed)
    return Steps(obs, False, {"success": False}, 0, 0.0, [obs["agentview"]] if keep_frames else [])


def _worker(conn, env_kwargs: dict) -> None:
    """A worker's loop: ("reset", seed, keep_frames) or ("run", actions, keep_frames) -> Steps; ("close",)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller handles Ctrl-C and then closes the pool
    from class_ros.sim.env import ArmEnv

    env = None
    try:
        try:
            env = ArmEnv(**env_kwargs)
        except ClassRosError as err:
            conn.send(("error", str(err)))
            return
        conn.send(("ok", env.control_rate_hz))
        while True:
            cmd, *args = conn.recv()
            if cmd == "close":
                break
            try:
                conn.send(("ok", (reset_episode if cmd == "reset" else run_chunk)(env, *args)))
            except ClassRosError as err:
                conn.send(("error", str(err)))
    except (EOFError, KeyboardInterrupt, BrokenPipeError):
        pass
    finally:
        if env is not None:
            env.close()


class EnvPool:
    """`n` ArmEnvs of one task, camera mode, image size and cameras, each in its own process."""

    def __init__(self, n: int, task: str, camera: str, image_size=(96, 96), cameras=("agentview",)):
        import multiprocessing as mp

        if n < 1:
            raise ClassRosError(f"an env pool needs at least 1 worker, got {n}.")
        ctx = mp.get_context("spawn")
        kwargs = {"task": task, "camera": camera, "image_size": tuple(int(s) for s in image_size),
                  "cameras": tuple(cameras)}
        self._procs, self._conns = [], []
        try:
            for _ in range(n):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_worker, args=(child, kwargs), daemon=True)
                proc.start()
                child.close()  # so a dead worker reads as EOF here
                self._procs.append(proc)
                self._conns.append(parent)
            rates = [self._recv(i) for i in range(n)]
        except BaseException:
            self.close()
            raise
        self.control_rate_hz = rates[0]
        self.n = n
        self._busy: set[int] = set()

    def _recv(self, slot: int):
        try:
            status, value = self._conns[slot].recv()
        except EOFError:
            raise ClassRosError(f"sim worker {slot} exited unexpectedly (exit code "
                                f"{self._procs[slot].exitcode}); see its message above.") from None
        if status == "error":
            raise ClassRosError(value)
        return value

    def send(self, slot: int, command: str, arg, keep_frames: bool = False) -> None:
        """Start "reset" (arg: the seed) or "run" (arg: (n, 7) actions) in `slot`; keep_frames: return every
        observation's image too (videos). The slot's Steps come from results()."""
        assert command in ("reset", "run") and slot not in self._busy
        arg = int(arg) if command == "reset" else np.asarray(arg, dtype=np.float64)
        self._conns[slot].send((command, arg, bool(keep_frames)))
        self._busy.add(slot)

    def results(self) -> list[tuple[int, Steps]]:
        """(slot, Steps) of every command that has finished; waits until at least one has."""
        from multiprocessing.connection import wait

        assert self._busy, "no command is running"
        by_conn = {self._conns[slot]: slot for slot in self._busy}
        done = sorted(by_conn[c] for c in wait(list(by_conn)))
        self._busy.difference_update(done)
        return [(slot, self._recv(slot)) for slot in done]

    def close(self) -> None:
        """Stop the workers (each closes its renderer); a worker that does not stop in 5 s is killed."""
        for conn in self._conns:
            try:
                conn.send(("close",))
            except (BrokenPipeError, OSError):
                pass
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self._conns:
            conn.close()
        self._procs, self._conns = [], []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

"""The mapping YAML: which topics and fields become which dataset keys, at what rate.

Layout (see `config/mappings/sim.yaml` and `real_arm_example.yaml` for commented examples):

    rate_hz: 10                       # output frame rate (the dataset's control rate)
    reference: /camera/image_raw      # frames span this topic's first..last message of each episode
    time: header                      # header | receive (header falls back to receive time when a
                                      #   message has no header or a zero stamp)
    max_age_s: 0.2                    # default staleness limit of every key (default 2 frame periods)
    episodes: {marker_topic: /episode, gap_s: 2.0}   # optional splits inside a bag
    observations:
      agentview: {topic: /camera/image_raw, image: {size: [96, 96], crop: [0, 80, 480, 480]}}
      joint_pos: {topic: /joint_states, joints: [j1, j2, gripper]}          # by name, never by index
      base: {topic: /odom, field: [pose.pose.position.x, pose.pose.position.y, twist.twist.angular.z]}
    action:
      kind: joint_position
      sources:                        # concatenated in order
        - {topic: /forward_position_controller/commands, field: data, names: [j1, j2]}
        - {topic: /gripper_controller/commands, field: data, names: [gripper]}
      # or: next_observation: joint_pos   (the next frame's value of an observation key)
      lookahead_s: 0.005              # optional: sample commands as-of t + lookahead_s (see below)

Every key is sampled as-of the frame time t: the latest message at or before t, never a later one.
The one exception is `action.lookahead_s` (default 0): a policy or teleop node publishes the command
computed from the frame at t a few milliseconds after t, so a small lookahead pairs each frame with
its own command instead of the previous one. Observations never look ahead.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from class_ros.data.schema import ACTION_KINDS
from class_ros.errors import ClassRosError

MAX_IMAGE_SIDE = 2048  # model inputs are ~100 px; a larger size is a typo that would run out of memory per frame

TIME_SOURCES = ("header", "receive")


def _fail(where: str, what: str) -> ClassRosError:
    return ClassRosError(f"mapping {where}: {what}")


@dataclass
class ImageSpec:
    """Resize (and optional crop box top, left, height, width) applied to every decoded frame."""

    size: tuple[int, int]
    crop: tuple[int, int, int, int] | None = None
    max_depth_m: float = 4.0


@dataclass
class Source:
    """One topic read into a vector: field paths, or joint positions picked by joint name."""

    topic: str
    fields: list[str] = field(default_factory=list)  # empty with joints: the message type's default
    joints: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # names of the output dims (default: derived)
    image: ImageSpec | None = None
    max_age_s: float = 0.0
    time: str = "header"


@dataclass
class Mapping:
    """A parsed and checked mapping file."""

    rate_hz: float
    reference: str
    observations: dict[str, Source]
    action_sources: list[Source]
    next_observation: str | None = None
    action_kind: str = "joint_position"
    lookahead_s: float = 0.0
    time: str = "header"
    marker_topic: str | None = None
    gap_s: float | None = None
    path: str = ""

    @property
    def topics(self) -> list[str]:
        """Every topic the mapping reads, in a stable order."""
        seen = [s.topic for s in [*self.observations.values(), *self.action_sources]] + [self.reference]
        if self.marker_topic:
            seen.append(self.marker_topic)
        return list(dict.fromkeys(seen))

    def to_dict(self) -> dict:
        """A JSON-able record of the mapping, kept in the dataset metadata."""
        import dataclasses
        return dataclasses.asdict(self)


def _str_list(value, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _fail(where, f"expected a string or a list of strings, got {value!r}.")
    return list(value)


def _positive(value, where: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise _fail(where, f"expected a number, got {value!r}.") from None
    if not value > 0:
        raise _fail(where, f"must be positive, got {value}.")
    return value


def _source(d, where: str, default_age: float, default_time: str) -> Source:
    if not isinstance(d, dict) or not isinstance(d.get("topic"), str):
        raise _fail(where, "needs a 'topic' (and a 'field', 'joints' or 'image').")
    allowed = {"topic", "field", "joints", "names", "image", "max_age_s", "time"}
    unknown = set(d) - allowed
    if unknown:
        raise _fail(where, f"unknown entries {sorted(unknown)}; allowed: {sorted(allowed)}.")
    src = Source(topic=d["topic"], fields=_str_list(d.get("field"), f"{where}.field"),
                 joints=_str_list(d.get("joints"), f"{where}.joints"), names=_str_list(d.get("names"), f"{where}.names"),
                 max_age_s=_positive(d.get("max_age_s", default_age), f"{where}.max_age_s"),
                 time=d.get("time", default_time))
    if src.time not in TIME_SOURCES:
        raise _fail(f"{where}.time", f"must be one of {TIME_SOURCES}, got {src.time!r}.")
    if len(set(src.joints)) != len(src.joints):
        raise _fail(f"{where}.joints", "lists a joint twice.")
    if "image" in d:
        img = d["image"] or {}
        size = img.get("size") if isinstance(img, dict) else None
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
            raise _fail(f"{where}.image.size", f"must be [height, width] in pixels, got {size!r}.")
        if max(size) > MAX_IMAGE_SIDE:
            raise _fail(f"{where}.image.size", f"is {size}; the dataset stores every frame at this size, keep each "
                                               f"side at most {MAX_IMAGE_SIDE} pixels (models use ~100).")
        crop = img.get("crop")
        if crop is not None and not (isinstance(crop, list) and len(crop) == 4 and all(isinstance(c, int) for c in crop)):
            raise _fail(f"{where}.image.crop", f"must be [top, left, height, width] in pixels, got {crop!r}.")
        if crop is not None and (min(crop[:2]) < 0 or min(crop[2:]) <= 0):
            raise _fail(f"{where}.image.crop", f"needs top, left >= 0 and height, width > 0, got {crop}.")
        src.image = ImageSpec(tuple(size), tuple(crop) if crop else None,
                              _positive(img.get("max_depth_m", 4.0), f"{where}.image.max_depth_m"))
        if src.fields or src.joints:
            raise _fail(where, "an image key takes no 'field' or 'joints'.")
    elif not src.fields and not src.joints:
        raise _fail(where, "needs a 'field' (path into the message), 'joints' (names) or 'image'.")
    if src.names and src.joints and len(src.names) != len(src.joints):
        raise _fail(f"{where}.names", f"has {len(src.names)} names for {len(src.joints)} joints.")
    return src


def parse_mapping(d: dict, path: str = "") -> Mapping:
    """Check a mapping dict (the YAML's content) and build a `Mapping`; raise one clear error otherwise."""
    if not isinstance(d, dict):
        raise ClassRosError(f"mapping {path or ''} must be a YAML mapping with rate_hz, reference, observations, action.")
    allowed = {"rate_hz", "reference", "time", "max_age_s", "episodes", "observations", "action"}
    unknown = set(d) - allowed
    if unknown:
        raise _fail("top level", f"unknown entries {sorted(unknown)}; allowed: {sorted(allowed)}.")
    for key in ("rate_hz", "reference", "observations", "action"):
        if key not in d:
            raise _fail("top level", f"'{key}' is missing.")
    rate = _positive(d["rate_hz"], "rate_hz")
    time = d.get("time", "header")
    if time not in TIME_SOURCES:
        raise _fail("time", f"must be one of {TIME_SOURCES}, got {time!r}.")
    age = _positive(d.get("max_age_s", 2.0 / rate), "max_age_s")
    obs = d["observations"]
    if not isinstance(obs, dict) or not obs:
        raise _fail("observations", "must map at least one key name to a source.")
    observations = {}
    for name, spec in obs.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise _fail("observations", f"key name {name!r} must be a plain name such as 'agentview'.")
        observations[name] = _source(spec, f"observations.{name}", age, time)

    act = d["action"]
    if not isinstance(act, dict):
        raise _fail("action", "must hold 'sources' (a list of topics) or 'next_observation' (a key name).")
    unknown = set(act) - {"sources", "next_observation", "kind", "lookahead_s"}
    if unknown:
        raise _fail("action", f"unknown entries {sorted(unknown)}; allowed: sources, next_observation, kind, "
                              "lookahead_s.")
    lookahead = act.get("lookahead_s", 0.0)
    if not isinstance(lookahead, (int, float)) or not 0.0 <= lookahead < 1.0 / rate:
        raise _fail("action.lookahead_s", f"must be at least 0 and below one frame period ({1.0 / rate:g} s), "
                                          f"got {lookahead}.")
    nxt = act.get("next_observation")
    sources_raw = act.get("sources") or []
    if isinstance(sources_raw, dict):
        sources_raw = [sources_raw]
    if bool(nxt) == bool(sources_raw):
        raise _fail("action", "give exactly one of 'sources' (command topics) or 'next_observation' (a key name).")
    if nxt is not None and (nxt not in observations or observations[nxt].image is not None):
        raise _fail("action.next_observation", f"{nxt!r} must name a low-dim observation key "
                                              f"(one of {sorted(k for k, s in observations.items() if not s.image)}).")
    sources = [_source(s, f"action.sources[{i}]", age, time) for i, s in enumerate(sources_raw)]
    if any(s.image for s in sources):
        raise _fail("action.sources", "an action source cannot be an image.")
    joint_based = all(s.joints for s in sources) if sources else bool(observations[nxt].joints)
    kind = act.get("kind", "joint_position" if joint_based else "other")
    if kind not in ACTION_KINDS:
        raise _fail("action.kind", f"must be one of {ACTION_KINDS}, got {kind!r}.")

    episodes = d.get("episodes") or {}
    if not isinstance(episodes, dict) or set(episodes) - {"marker_topic", "gap_s"}:
        raise _fail("episodes", "may hold only 'marker_topic' (a Bool/Empty topic) and 'gap_s' (seconds).")
    gap = _positive(episodes["gap_s"], "episodes.gap_s") if "gap_s" in episodes else None
    if not isinstance(d["reference"], str) or not d["reference"]:
        raise _fail("reference", "must be a topic name.")
    return Mapping(rate_hz=rate, reference=d["reference"], observations=observations, action_sources=sources,
                   next_observation=nxt, action_kind=kind, lookahead_s=lookahead, time=time,
                   marker_topic=episodes.get("marker_topic"),
                   gap_s=gap, path=path)


def load_mapping(path: str | Path) -> Mapping:
    """Read and check a mapping YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ClassRosError(f"mapping file {path} does not exist; see config/mappings/ for examples.")
    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ClassRosError(f"mapping file {path} is not valid YAML ({str(err).splitlines()[0]}).") from None
    return parse_mapping(d, str(path))

"""One bag -> dataset episodes: read the mapped topics, build each key's tracks, sample them on the
frame grid of every episode window, decode the sampled images, and count what was dropped and why.

A dropped frame is counted once, under its first reason in this order: observation keys in mapping
order, then the action.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from class_ros.data.bags import fields as fp
from class_ros.data.bags.mapping import Mapping, Source
from class_ros.data.bags.reading import (IMAGE_TYPES, BagSkipped, align_qos, build_typestore, check_readable,
                                         check_topics, iter_images, message_times, open_bag, read_topics)
from class_ros.data.bags.sync import NS, Sampled, Track, frame_grid, sample, split_windows
from class_ros.data.images import CropOutside, UnsupportedEncoding, decode_compressed, decode_image, preprocess
from class_ros.data.schema import ACTION, KeySchema, obs_key
from class_ros.errors import ClassRosError

CLOCK_MISMATCH_S = 5.0  # header stamps this far from receive times are on another clock (e.g. sim time)


@dataclass
class KeyTracks:
    """A key's channels (one track per field source, or one per joint), their dim names and clock."""

    tracks: list[Track]
    names: list[str]
    clock_offset_s: float | None = None  # median(header - receive) when header stamps were used


@dataclass
class BagResult:
    """What one bag produced: episodes ready for the store, and a report entry per episode window."""

    episodes: list[dict] = field(default_factory=list)  # {"obs/<k>": (T, ...), "action": (T, D)}
    reports: list[dict] = field(default_factory=list)  # one per window; "episode" index filled by the writer
    schemas: dict[str, KeySchema] = field(default_factory=dict)
    action_names: list[str] = field(default_factory=list)
    joint_names: list[str] = field(default_factory=list)
    messages: int = 0
    warnings: list[str] = field(default_factory=list)  # e.g. QoS profiles taken from the storage


def _clock_offset(data, times: np.ndarray) -> float | None:
    recv = np.asarray(data.receive_ns, dtype=np.int64)
    used_header = times != recv
    if not used_header.any():
        return None
    return float(np.median((times - recv)[used_header])) / NS


def _low_dim_tracks(src: Source, data, key: str) -> KeyTracks:
    times = message_times(data, src.time)
    if src.joints:
        path = src.fields[0] if src.fields else fp.default_joint_field(data.messages[0])
        per_joint: dict[str, tuple[list, list]] = {j: ([], []) for j in src.joints}
        seen: set[str] = set()
        for t, msg in zip(times, data.messages):
            for name, value in fp.joint_values(msg, path, src.topic).items():
                seen.add(name)
                if name in per_joint:
                    per_joint[name][0].append(t)
                    per_joint[name][1].append(value)
        absent = [j for j in src.joints if not per_joint[j][0]]
        if absent:
            raise BagSkipped(f"joint(s) {absent} for key {key} never appear on {src.topic} (it carries "
                             f"{sorted(seen) or 'no joint names'}); fix the joint names in the mapping")
        tracks = [Track.sorted(ts, np.asarray(vs)[:, None]) for ts, vs in per_joint.values()]
        return KeyTracks(tracks, src.names or list(src.joints), _clock_offset(data, times))
    kept_t, rows, names = [], [], None
    for t, msg in zip(times, data.messages):
        try:
            row, row_names = fp.extract(msg, src.fields, src.topic)
        except fp.MissingValue:
            continue  # e.g. a trajectory without points: no value this time
        if names is None:
            names = row_names
        elif len(row) != len(names):
            raise BagSkipped(f"field {src.fields} on {src.topic} holds {len(names)} values in one message and "
                             f"{len(row)} in another; map a fixed-size field")
        kept_t.append(t)
        rows.append(row)
    if not rows:
        raise BagSkipped(f"no message on {src.topic} holds a value at {src.fields} for key {key}")
    if src.names and len(src.names) != len(names):
        raise BagSkipped(f"key {key} names {len(src.names)} dims but {src.topic} {src.fields} holds {len(names)}")
    return KeyTracks([Track.sorted(kept_t, np.stack(rows))], src.names or names, _clock_offset(data, times))


def _image_tracks(src: Source, data) -> KeyTracks:
    times = message_times(data, src.time)
    return KeyTracks([Track.sorted(times, np.arange(len(times)))], [], _clock_offset(data, times))


def _check_clocks(keys: dict[str, KeyTracks]) -> None:
    """Refuse to mix header stamps on another clock (sim time, an unsynced camera) with receive times."""
    far = {k: kt.clock_offset_s for k, kt in keys.items()
           if kt.clock_offset_s is not None and abs(kt.clock_offset_s) > CLOCK_MISMATCH_S}
    near = [k for k, kt in keys.items() if kt.clock_offset_s is None or abs(kt.clock_offset_s) <= CLOCK_MISMATCH_S]
    if far and near:
        k, off = next(iter(far.items()))
        raise BagSkipped(f"key {k}'s header stamps are {off:+.1f} s away from the bag's receive times (another "
                         f"clock, e.g. sim time) while {near[0]} uses receive time; set `time: receive` in the mapping")


def _decode(msg, src: Source) -> np.ndarray:
    spec = src.image
    if hasattr(msg, "format"):
        rgb = decode_compressed(msg.format, msg.data, topic=src.topic, max_depth_m=spec.max_depth_m)
    else:
        rgb = decode_image(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian),
                           topic=src.topic, max_depth_m=spec.max_depth_m)
    return preprocess(rgb, spec.size, spec.crop)


def convert_bag(path: Path, mapping: Mapping, extra_types: dict, progress=None) -> BagResult:
    """Read one bag and cut it into episodes as the mapping says; BagSkipped if the bag cannot be used."""
    reader = open_bag(path)
    try:
        warnings = align_qos(reader, set(mapping.topics))
        result = _convert_open(reader, mapping, extra_types, progress)
        result.warnings = warnings + result.warnings
        return result
    finally:
        reader.close()


def _convert_open(reader, mapping: Mapping, extra_types: dict, progress) -> BagResult:
    conns = check_topics(reader, mapping.topics, mapping.marker_topic)
    obs = mapping.observations
    image_topics = {s.topic for s in obs.values() if s.image}
    for name, src in obs.items():
        msgtype = conns[src.topic][0].msgtype
        if src.image and msgtype not in IMAGE_TYPES:
            raise BagSkipped(f"image key {name} maps {src.topic}, which is {msgtype}, not sensor_msgs Image or "
                             "CompressedImage")
        if not src.image and src.topic in image_topics:
            raise BagSkipped(f"key {name} reads fields of image topic {src.topic}; map images with `image:` only")
    check_readable(reader, conns)
    typestore = build_typestore([c for cs in conns.values() for c in cs], extra_types)
    _check_first_images(reader, conns, typestore, obs)
    data = read_topics(reader, conns, typestore, image_topics, progress)
    result = BagResult(messages=sum(len(d.messages) for d in data.values()), joint_names=_joint_names(mapping))
    keys = _key_tracks(mapping, data)
    _check_clocks(keys)
    if mapping.action_sources:
        result.action_names = [n for i in range(len(mapping.action_sources)) for n in keys[f"action[{i}]"].names]
    else:
        result.action_names = [f"next_{n}" for n in keys[mapping.next_observation].names]

    ref_times = np.sort(message_times(data[mapping.reference], mapping.time))
    plans = []  # every window is sampled first, so one more pass decodes the images all of them need
    for start, end in _windows(mapping, data, ref_times):
        t = frame_grid(ref_times, start, end, mapping.rate_hz)
        if len(t):
            plans.append(_sample_window(t, keys, mapping))
    decoded = _decode_sampled(reader, conns, typestore, obs, plans)
    for plan in plans:
        episode, report = _assemble(plan, obs, decoded)
        result.reports.append(report)
        if episode is not None:
            result.episodes.append(episode)
    for name, src in obs.items():
        shape = (*src.image.size, 3) if src.image else (len(keys[name].names),)
        result.schemas[obs_key(name)] = KeySchema("uint8" if src.image else "float32", shape,
                                                  "image" if src.image else "low_dim")
    result.schemas[ACTION] = KeySchema("float32", (len(result.action_names),), "low_dim")
    return result


def _key_tracks(mapping: Mapping, data) -> dict[str, KeyTracks]:
    """Tracks of every observation key and of each action source (`action[i]`)."""
    keys: dict[str, KeyTracks] = {}
    for name, src in mapping.observations.items():
        keys[name] = _image_tracks(src, data[src.topic]) if src.image else _low_dim_tracks(src, data[src.topic], name)
    for i, src in enumerate(mapping.action_sources):
        keys[f"action[{i}]"] = _low_dim_tracks(src, data[src.topic], f"action[{i}]")
    return keys


def _windows(mapping: Mapping, data, ref_times: np.ndarray) -> list[tuple[int, int]]:
    """Episode windows of the bag: markers and gaps as the mapping says, else the whole reference span."""
    if not mapping.marker_topic:
        return split_windows(ref_times, gap_s=mapping.gap_s)
    m = data[mapping.marker_topic]
    m_times = message_times(m, mapping.time)
    order = np.argsort(m_times, kind="stable")
    values = None if m.msgtype.endswith("/Empty") else np.array([bool(x.data) for x in m.messages])[order]
    return split_windows(ref_times, m_times[order], values, gap_s=mapping.gap_s)


def _check_first_images(reader, conns, typestore, obs: dict[str, Source]) -> None:
    """Decode each image topic's first frame before reading the bag: a crop outside the image fails fast."""
    for name, src in obs.items():
        if src.image and src.image.crop:
            for _ordinal, msg in iter_images(reader, conns[src.topic], typestore, {0}):
                try:
                    _decode(msg, src)
                except CropOutside as err:
                    raise BagSkipped(f"image key {name}: {err}") from None
                except ClassRosError:
                    pass  # a corrupt first frame is only that frame's problem
                break


def _decode_sampled(reader, conns, typestore, obs: dict[str, Source], plans: list[dict]) -> dict:
    """{image key: {message ordinal: (H, W, 3) uint8, or None if that frame is corrupt}} for kept frames."""
    decoded: dict[str, dict[int, np.ndarray | None]] = {}
    for name, src in obs.items():
        if not src.image:
            continue
        wanted = {int(o) for plan in plans for o in plan["sampled"][name].values[plan["keep"]]}
        decoded[name] = {}
        for ordinal, msg in iter_images(reader, conns[src.topic], typestore, wanted):
            try:
                decoded[name][ordinal] = _decode(msg, src)
            except UnsupportedEncoding:
                raise
            except CropOutside as err:  # the mapping's crop, not the frame, is wrong: no frame of this bag fits
                raise BagSkipped(f"image key {name}: {err}") from None
            except ClassRosError:
                decoded[name][ordinal] = None  # one corrupt frame: drop the frames that sample it
    return decoded


def _joint_names(mapping: Mapping) -> list[str]:
    obs = mapping.observations
    if "joint_pos" in obs and obs["joint_pos"].joints:
        return list(obs["joint_pos"].joints)
    return next((list(s.joints) for s in obs.values() if s.joints), [])


def _sample_window(t: np.ndarray, keys: dict[str, KeyTracks], mapping: Mapping) -> dict:
    sampled: dict[str, Sampled] = {}
    for name, src in mapping.observations.items():
        sampled[name] = sample(keys[name].tracks, t, src.max_age_s)
    if mapping.action_sources:
        t_cmd = t + int(round(mapping.lookahead_s * NS))  # the command sent in response to frame t
        parts = [sample(keys[f"action[{i}]"].tracks, t_cmd, s.max_age_s)
                 for i, s in enumerate(mapping.action_sources)]
        missing = np.any([p.missing for p in parts], axis=0)
        age = np.where(missing, np.nan, np.max([np.nan_to_num(p.age_s) for p in parts], axis=0))
        action = Sampled(np.concatenate([p.values for p in parts], axis=1), age, missing,
                         np.any([p.stale for p in parts], axis=0))
    else:
        # The next frame's value of the key: sampled one period later, and absent after the last frame.
        src = mapping.observations[mapping.next_observation]
        t_next = t + int(round(NS / mapping.rate_hz))
        action = sample(keys[mapping.next_observation].tracks, t_next, src.max_age_s)
        action.missing = action.missing.copy()
        action.missing[-1] = True
    sampled[ACTION] = action

    reasons = np.full(len(t), "", dtype=object)
    for name, s in sampled.items():
        unset = reasons == ""
        reasons[unset & s.missing] = f"missing:{name}"
        reasons[unset & ~s.missing & s.stale] = f"stale:{name}"
    if not mapping.action_sources:
        last = len(t) - 1
        if reasons[last] == "missing:action":
            reasons[last] = "no_next_frame"
    return {"t": t, "sampled": sampled, "reasons": reasons, "keep": reasons == ""}


def _assemble(plan: dict, obs: dict[str, Source], decoded: dict) -> tuple[dict | None, dict]:
    t, sampled, reasons = plan["t"], plan["sampled"], plan["reasons"].copy()
    for name in decoded:  # frames whose image could not be decoded
        bad = np.array([reasons[i] == "" and decoded[name].get(int(o)) is None
                        for i, o in enumerate(sampled[name].values)], dtype=bool)
        reasons[bad] = f"corrupt:{name}"
    keep = reasons == ""
    dropped: dict[str, int] = {}
    for r in reasons[~keep]:
        dropped[r] = dropped.get(r, 0) + 1
    ages = {}
    for name, s in sampled.items():
        a = s.age_s[keep]
        ages[name] = {"median_s": float(np.median(a)) if len(a) else None, "max_s": float(np.max(a)) if len(a) else None}
    kept_t = t[keep]
    report = {"frames": int(len(t)), "kept": int(keep.sum()), "dropped": dropped, "age": ages,
              "start_s": float(t[0] / NS), "duration_s": float((kept_t[-1] - kept_t[0]) / NS) if len(kept_t) else 0.0}
    if not keep.any():
        return None, report
    episode = {}
    for name, src in obs.items():
        values = sampled[name].values[keep]
        if src.image:
            episode[obs_key(name)] = np.stack([decoded[name][int(o)] for o in values])
        else:
            episode[obs_key(name)] = values.astype(np.float32)
    episode[ACTION] = sampled[ACTION].values[keep].astype(np.float32)
    return episode, report

"""Finding rosbag2 recordings, opening them with `rosbags`, and reading the mapped topics.

No ROS needed: `rosbags.rosbag2.Reader` reads sqlite3 and MCAP bags, and a typestore built per bag
deserialises them. Type definitions come, in order of preference, from `--msg-dir` (custom .msg files, which
override what a bag embeds), from the bag itself (Iron+ and MCAP bags embed them), then from rosbags' built-in
ROS 2 types. When metadata.yaml and the storage file disagree about a topic's QoS profiles (`ros2 bag` plays
such bags), the storage's profiles are used and the bag's report says so.

Every problem that makes a bag unusable raises `BagSkipped` with one sentence; the converter
reports it and goes on with the next bag.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from class_ros.errors import ClassRosError

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
MARKER_TYPES = ("std_msgs/msg/Bool", "std_msgs/msg/Empty")


class BagSkipped(ClassRosError):
    """A bag that cannot be converted; the message says why in one sentence."""


@dataclass
class BagRef:
    """One recording found under the given paths: a rosbag2 folder or a lone .mcap file."""

    path: Path
    problem: str = ""  # non-empty: skip this bag with this reason


def find_bags(paths: list[str | Path]) -> list[BagRef]:
    """Expand PATHs (bag folders, lone .mcap files, or folders of these) into bags, in a stable order."""
    found: list[BagRef] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            found.append(BagRef(path, f"{path} does not exist"))
        elif path.is_file():
            if path.suffix == ".mcap":
                found.append(BagRef(path))
            elif path.suffix == ".db3":
                found.append(BagRef(path, "a lone .db3 file cannot be read without its bag folder's metadata.yaml "
                                          "(pass the folder, or run `ros2 bag reindex` on it)"))
            else:
                found.append(BagRef(path, f"{path.name} is neither a rosbag2 folder nor an .mcap file"))
        else:
            found.extend(_walk(path))
    return found


def _walk(folder: Path) -> list[BagRef]:
    if (folder / "metadata.yaml").is_file():
        return [BagRef(folder)]
    out: list[BagRef] = []
    if any(folder.glob("*.db3")):
        out.append(BagRef(folder, "the folder holds .db3 files but no metadata.yaml (run `ros2 bag reindex` "
                                  "on it to rebuild the metadata)"))
    out += [BagRef(f) for f in sorted(folder.glob("*.mcap"))]
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        out += _walk(sub)
    return out


# ------------------------------------------------------------------------------------------ types
def load_msg_dir(msg_dir: str | Path | None) -> dict:
    """Parse custom .msg files laid out as DIR/<package>/msg/<Name>.msg into a rosbags types dict."""
    if msg_dir is None:
        return {}
    from rosbags.typesys import get_types_from_msg

    root = Path(msg_dir)
    if not root.is_dir():
        raise ClassRosError(f"--msg-dir {root} is not a folder of <package>/msg/<Name>.msg files.")
    files = sorted(root.rglob("*.msg"))
    if not files:
        raise ClassRosError(f"--msg-dir {root} holds no .msg files; lay them out as <package>/msg/<Name>.msg.")
    typs: dict = {}
    for f in files:
        if f.parent.name != "msg":
            raise ClassRosError(f"cannot tell the package of {f}; lay custom messages out as "
                                "<package>/msg/<Name>.msg under --msg-dir.")
        name = f"{f.parent.parent.name}/msg/{f.stem}"
        try:
            typs.update(get_types_from_msg(f.read_text(), name))
        except Exception as err:  # rosbags raises its own parse errors
            raise ClassRosError(f"{f} is not a valid .msg definition ({str(err).splitlines()[0]}).") from None
    return typs


def _embedded_types(conn) -> dict:
    from rosbags.interfaces import MessageDefinitionFormat
    from rosbags.typesys import get_types_from_idl, get_types_from_msg

    fmt, text = conn.msgdef.format, conn.msgdef.data
    if not text.strip():  # some writers store an empty definition: treat it as none
        return {}
    if fmt == MessageDefinitionFormat.MSG:
        return get_types_from_msg(text, conn.msgtype)
    if fmt == MessageDefinitionFormat.IDL:
        sep = "=" * 80 + "\n"
        typs: dict = {}
        for part in text.split(sep)[1:] if text.startswith(sep) else [text]:
            typs.update(get_types_from_idl(part.split("\n", 1)[1] if part.startswith("IDL: ") else part))
        return typs
    return {}


def _closure(typs: dict, roots: list[str]) -> dict:
    """The definitions of `roots` and every type they reference (registering all ~150 built-ins is slow)."""
    from rosbags.interfaces import Nodetype

    out, todo = {}, [r for r in roots if r in typs]
    while todo:
        name = todo.pop()
        if name in out:
            continue
        out[name] = typs[name]
        for _field, (node, spec) in typs[name][1]:
            if node in (Nodetype.ARRAY, Nodetype.SEQUENCE):
                node, spec = spec[0]
            if node == Nodetype.NAME and spec in typs:
                todo.append(spec)
    return out


_TYPESTORES: dict[str, object] = {}  # bags of one recording setup share definitions: build each store once


def build_typestore(connections, extra_types: dict):
    """A typestore with the bag's embedded definitions for `connections`, then --msg-dir, then built-in types."""
    from rosbags.typesys import Stores, get_typestore

    key = repr((sorted((c.msgtype, c.msgdef.data) for c in connections), sorted(extra_types.items())))
    if key in _TYPESTORES:
        return _TYPESTORES[key]
    typs = dict(get_typestore(Stores.LATEST).fielddefs)
    for conn in connections:
        if conn.msgtype in extra_types:
            continue  # --msg-dir overrides what the bag embeds (also a definition rosbags cannot parse)
        try:
            embedded = _embedded_types(conn)
        except Exception as err:  # rosbags' parsers raise TypesysError, but also lark and plain Python errors
            raise BagSkipped(f"the message definition of {conn.msgtype} embedded in the bag for topic {conn.topic} "
                             f"cannot be parsed ({_short(err)}); pass --msg-dir with its <package>/msg/<Name>.msg "
                             "to use instead") from None
        typs.update({k: v for k, v in embedded.items() if k not in extra_types})
    typs.update(extra_types)
    store = get_typestore(Stores.EMPTY)
    store.register(_closure(typs, [c.msgtype for c in connections]))
    for conn in connections:
        if conn.msgtype not in store.types:
            raise BagSkipped(f"message type {conn.msgtype} of topic {conn.topic} is unknown: the bag embeds no "
                             "definition for it; pass --msg-dir with its <package>/msg/<Name>.msg file")
    if len(_TYPESTORES) >= 16:
        _TYPESTORES.clear()
    _TYPESTORES[key] = store
    return store


# ------------------------------------------------------------------------------------------ reading
@dataclass
class TopicData:
    """The messages of one topic, in the order the storage yields them (receive order)."""

    topic: str
    msgtype: str
    receive_ns: list[int] = field(default_factory=list)
    messages: list = field(default_factory=list)  # deserialised; image topics keep only their header


def is_service_event(topic: str, msgtype: str) -> bool:
    return topic.endswith("/_service_event") or "/srv/" in msgtype


def open_bag(path: Path):
    """An open `rosbags.rosbag2.Reader`; BagSkipped when the files are missing, truncated or damaged."""
    from rosbags.rosbag2 import Reader

    try:
        reader = Reader(path)
        reader.open()
    except Exception as err:  # rosbags, sqlite3 and the mcap parser raise many types for damaged files
        raise BagSkipped(f"cannot open the bag ({_short(err)}); it is damaged, truncated or incomplete") from None
    return reader


def align_qos(reader, topics=None) -> list[str]:
    """Use the storage's QoS profiles where metadata.yaml lists others; returns a warning per topic changed.

    rosbags matches metadata connections to storage connections by topic, type and QoS profiles, so a
    disagreement (recorders of some ROS 2 releases wrote them) makes it read nothing; `ros2 bag play` plays them.
    """
    conns = getattr(reader.storage, "connections", None)
    stored = [c for s in getattr(reader.storage, "storages", []) for c in s.connections]
    warnings = []
    for i, conn in enumerate(conns if stored else []):
        if topics is not None and conn.topic not in topics:
            continue
        same = [s for s in stored if s.topic == conn.topic and s.msgtype == conn.msgtype]
        if same and all(s.ext != conn.ext for s in same):
            conns[i] = conn._replace(ext=same[0].ext)
            warnings.append(f"metadata.yaml and the storage file disagree about the QoS profiles of {conn.topic}; "
                            "used the storage's")
    return warnings


def _short(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:160]}" if text else type(err).__name__


def check_topics(reader, topics: list[str], marker_topic: str | None = None) -> dict[str, list]:
    """{topic: its connections} for every mapped topic; BagSkipped naming a topic that is absent or unusable."""
    by_topic: dict[str, list] = {}
    for conn in reader.connections:
        by_topic.setdefault(conn.topic, []).append(conn)
    have = sorted(by_topic)
    out = {}
    for topic in topics:
        conns = by_topic.get(topic)
        if not conns:
            raise BagSkipped(f"mapped topic {topic} is not in the bag (it has {', '.join(have) or 'no topics'})")
        types = {c.msgtype for c in conns}
        if len(types) > 1:
            raise BagSkipped(f"topic {topic} carries several message types {sorted(types)}; map one per topic")
        msgtype = types.pop()
        if is_service_event(topic, msgtype):
            raise BagSkipped(f"topic {topic} is a service-event topic ({msgtype}); service calls are not "
                             "demonstration data, map message topics instead")
        if topic == marker_topic and msgtype not in MARKER_TYPES:
            raise BagSkipped(f"marker topic {topic} is {msgtype}; episode markers must be std_msgs/Bool or Empty")
        out[topic] = conns
    return out


def explain_empty(reader, topic: str, conns: list) -> str:
    """Why a topic read no messages: a metadata/storage QoS disagreement (rosbags then skips it) or no data."""
    listed = sum(c.msgcount for c in conns)
    if listed == 0:
        return f"topic {topic} has no messages in this bag"
    stored = [c for s in getattr(reader.storage, "storages", []) for c in s.connections if c.topic == topic]
    if stored and all(s.ext != c.ext for s in stored for c in conns):
        return (f"metadata.yaml lists {listed} messages on {topic} but reading yields none: metadata.yaml and the "
                "storage file disagree about the topic's QoS profiles, so rosbags skips them; fix "
                "offered_qos_profiles in metadata.yaml (or `ros2 bag reindex`) and convert again")
    return (f"metadata.yaml lists {listed} messages on {topic} but reading yields none; the storage file and "
            "metadata.yaml disagree")


def check_readable(reader, conns_by_topic: dict[str, list]) -> None:
    """BagSkipped with the reason when a mapped topic yields no message at all (checked before decoding)."""
    for topic, conns in conns_by_topic.items():
        try:
            first = next(iter(reader.messages(connections=conns)), None)
        except Exception as err:
            raise BagSkipped(f"reading {topic} failed ({_short(err)}); the file is damaged or truncated") from None
        if first is None:
            raise BagSkipped(explain_empty(reader, topic, conns))


def read_topics(reader, conns_by_topic: dict[str, list], typestore, image_topics: set[str],
                progress=None) -> dict[str, TopicData]:
    """Deserialise every message of the mapped topics (image topics keep only their header)."""
    out = {t: TopicData(t, c[0].msgtype) for t, c in conns_by_topic.items()}
    conns = [c for cs in conns_by_topic.values() for c in cs]
    try:
        for conn, t_ns, raw in reader.messages(connections=conns):
            data = out[conn.topic]
            if conn.topic in image_topics:
                # Only the stamp is needed now; the few sampled images are decoded in a second pass.
                msg = _deserialize(conn, raw, lambda: _header_only(typestore, raw, conn.msgtype))
            else:
                msg = _deserialize(conn, raw, lambda: typestore.deserialize_cdr(raw, conn.msgtype))
            data.receive_ns.append(int(t_ns))
            data.messages.append(msg)
            if progress is not None:
                progress.update(1)
    except BagSkipped:
        raise
    except Exception as err:
        raise BagSkipped(f"reading stopped part-way ({_short(err)}); the file is damaged or truncated") from None
    for topic, data in out.items():
        if not data.messages:
            raise BagSkipped(explain_empty(reader, topic, conns_by_topic[topic]))
    return out


def _deserialize(conn, raw: bytes, parse):
    """parse(), with a message that does not fit its type definition named as such (not as a damaged file)."""
    try:
        return parse()
    except Exception as err:  # rosbags' SerdeError, or struct/index errors from generated code
        source = "the definition embedded in the bag" if conn.msgdef.data.strip() else "its definition"
        raise BagSkipped(f"a message on {conn.topic} does not fit {source} of {conn.msgtype} ({_short(err)}); pass "
                         "--msg-dir with the right <package>/msg/<Name>.msg to use instead") from None


class _Stamped:
    """Just a message's header stamp (image topics), so a bag's frames are not all held in memory."""

    def __init__(self, stamp_ns: int):
        self.stamp_ns = stamp_ns


def _header_only(typestore, raw, msgtype: str) -> _Stamped:
    # Image and CompressedImage start with std_msgs/Header, so in CDR the stamp's sec (int32) and nanosec
    # (uint32) are the 8 bytes after the 4-byte encapsulation header; reading them skips copying the pixels.
    if len(raw) >= 12 and raw[0] == 0 and raw[1] in (0, 1):
        sec, nanosec = struct.unpack_from("<iI" if raw[1] == 1 else ">iI", raw, 4)
    else:  # another encapsulation: let rosbags parse it
        stamp = typestore.deserialize_cdr(raw, msgtype).header.stamp
        sec, nanosec = stamp.sec, stamp.nanosec
    return _Stamped(int(sec) * 1_000_000_000 + int(nanosec))


def iter_images(reader, conns: list, typestore, wanted: set[int]):
    """Yield (ordinal, message) for the wanted ordinals of one image topic, in receive order."""
    ordinal = -1
    try:
        for _conn, _t, raw in reader.messages(connections=conns):
            ordinal += 1
            if ordinal in wanted:
                yield ordinal, _deserialize(conns[0], raw, lambda: typestore.deserialize_cdr(raw, conns[0].msgtype))
    except BagSkipped:
        raise
    except Exception as err:
        raise BagSkipped(f"reading images stopped part-way ({_short(err)}); the file is damaged or truncated") from None


def stamp_ns(msg) -> int:
    """The header stamp in ns, or 0 when the message has no header."""
    if isinstance(msg, _Stamped):
        return msg.stamp_ns
    header = getattr(msg, "header", None)
    if header is None:
        return 0
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def message_times(data: TopicData, time: str) -> np.ndarray:
    """(N,) int64 ns per message: header stamps when asked for and non-zero, else receive times."""
    recv = np.asarray(data.receive_ns, dtype=np.int64)
    if time == "receive":
        return recv
    stamps = np.array([stamp_ns(m) for m in data.messages], dtype=np.int64)
    return np.where(stamps > 0, stamps, recv)

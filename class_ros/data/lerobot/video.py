"""mp4 video in and out through PyAV: frames looked up by presentation time, streamed (never a whole video in RAM).

    reader = VideoReader(path)                      # checks the container and that PyAV can decode its codec
    for rgb in reader.frames_at(times, tolerance_s):  # (H, W, 3) uint8, one per requested time, in order
        ...
    writer = VideoWriter(path, fps=30, codec="h264", size=(H, W))
    writer.write(rgb); writer.close()

A frame matches a requested time t when its presentation time lies within `tolerance_s` of t (LeRobot's own
rule, with its default 1e-4 s): frames are matched by timestamp, never by their position in the stream.
"""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from class_ros.errors import ClassRosError

# Our codec names -> (PyAV encoder, the codec name LeRobot's info.json records). Options follow LeRobot's
# defaults: a key frame every 2 frames (fast random access for training loaders) and crf 30.
ENCODERS = {"h264": ("libx264", "h264"), "av1": ("libsvtav1", "av1")}
GOP = 2
SEEK_AHEAD_S = 2.0  # decode forward up to this far; seek (to the key frame before) when the next time is further


def _av_error():
    import av
    return av.FFmpegError


class VideoReader:
    """One mp4's video stream, read forward by presentation time, seeking only when a request lies behind or far ahead."""

    def __init__(self, path: Path):
        import av

        self.path = Path(path)
        if not self.path.is_file():
            raise ClassRosError(f"video {self.path} is missing; the dataset is incomplete.")
        try:
            self.container = av.open(str(self.path))
        except (av.FFmpegError, OSError) as err:
            raise ClassRosError(f"video {self.path} cannot be opened ({err.strerror or err}); the file is damaged or "
                                "truncated.") from None
        if not self.container.streams.video:
            self.close()
            raise ClassRosError(f"{self.path} holds no video stream.")
        self.stream = self.container.streams.video[0]
        ctx = self.stream.codec_context
        if ctx is None or ctx.codec is None or not ctx.codec.is_decoder:
            self.close()
            raise ClassRosError(f"video {self.path} uses a codec that PyAV cannot decode; re-encode it as AV1 or H.264.")
        self.codec = ctx.codec.name
        self.stream.thread_type = "AUTO"  # dav1d and h264 decode on several threads
        self._frames = None  # the decode iterator after the last seek
        self._cur = None  # (time, frame): the first decoded frame not yet passed

    @property
    def end_s(self) -> float | None:
        """Presentation time just after the last frame, as the container's header says (None if it does not)."""
        s = self.stream
        if s.duration is not None and s.time_base:
            return float(((s.start_time or 0) + s.duration) * s.time_base)
        return self.container.duration / 1e6 if self.container.duration else None

    def close(self) -> None:
        """Close the container (safe to call twice)."""
        if getattr(self, "container", None) is not None:
            self.container.close()
            self.container = None

    def _seek(self, t: float) -> None:
        offset = int(max(t, 0.0) / self.stream.time_base) if self.stream.time_base else 0
        self.container.seek(offset, backward=True, any_frame=False, stream=self.stream)
        self._frames = self.container.decode(self.stream)
        self._cur = None
        self._advance()

    def _advance(self) -> None:
        last = self._cur[0] if self._cur else None
        try:
            frame = next(self._frames, None)
        except _av_error() as err:
            after = f" after {last:.3f} s" if last is not None else ""
            raise ClassRosError(f"video {self.path} cannot be decoded{after} ({err.strerror or err}); the file is "
                                "damaged or truncated.") from None
        if frame is None:
            self._cur = None
            return
        t = float(frame.time) if frame.time is not None else float("nan")
        if last is not None and not t > last:
            raise ClassRosError(f"video {self.path} has a frame at {t:.4f} s after one at {last:.4f} s; its timestamps "
                                "are not increasing.")
        self._cur = (t, frame)

    def frames_at(self, times, tolerance_s: float):
        """Yield the (H, W, 3) uint8 RGB frame at each of the ascending `times` (seconds)."""
        times = np.asarray(times, dtype=np.float64)
        if not len(times):
            return
        if self._cur is None or self._cur[0] > times[0] + tolerance_s or times[0] - self._cur[0] > SEEK_AHEAD_S:
            self._seek(times[0] - tolerance_s)
        for t in times:
            while self._cur is not None and self._cur[0] < t - tolerance_s:
                self._advance()
            if self._cur is None:
                raise ClassRosError(f"video {self.path} ends before {t:.4f} s, where the table has a frame; the video "
                                    "is shorter than its table (truncated?).")
            if self._cur[0] > t + tolerance_s:
                raise ClassRosError(f"video {self.path} has no frame within {tolerance_s} s of {t:.4f} s (the next one "
                                    f"is at {self._cur[0]:.4f} s); the table's timestamps and the video disagree.")
            yield self._cur[1].to_ndarray(format="rgb24")


class VideoWriter:
    """One mp4 written frame by frame at a constant rate: frame i is shown at i / fps seconds."""

    def __init__(self, path: Path, fps: int, codec: str, size: tuple[int, int], crf: int = 30):
        import av

        if codec not in ENCODERS:
            raise ClassRosError(f"codec {codec!r} is not one of {sorted(ENCODERS)}.")
        height, width = size
        if height % 2 or width % 2:
            raise ClassRosError(f"images of {height}x{width} cannot be stored as yuv420p video; LeRobot's videos need "
                                "even heights and widths (re-import with an even --image-size).")
        encoder, self.codec = ENCODERS[codec]
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole configuration otherwise (1 = errors only)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(self.path), "w")
        self.stream = self.container.add_stream(encoder, rate=Fraction(fps), options={"g": str(GOP), "crf": str(crf)})
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        self.stream.codec_context.time_base = Fraction(1, fps)
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 RGB frame."""
        import av

        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self.frames
        frame.time_base = self.stream.codec_context.time_base
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and finish the file."""
        if self.container is None:
            return
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        self.container = None

"""Cine loops read by PyAV (MP4, AVI, MOV): one frame per decoded picture, numbered from the start."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from carotid.data.frames.kinds.base import FileKind, Probe, Source


class VideoKind(FileKind):
    name = "video"
    suffixes = frozenset({"mp4", "avi", "mov"})
    sequential = True

    def probe(self, path: str) -> Probe:
        """The container's frame count, or the count of its video packets where it states none (no decoding)."""
        import av

        with av.open(path) as container:
            stream = container.streams.video[0]
            if stream.frames:
                return Probe(self.name, int(stream.frames))
            return Probe(self.name, sum(1 for packet in container.demux(stream) if packet.size))

    def read(self, path: str, indices: Sequence[int], draft_size: int | None = None) -> Iterator[Source | Exception]:
        """Decodes from the start up to the last requested frame: exact frame numbers whatever the frame rate
        (seeking lands on key frames by time stamp, which a variable-rate file does not map to numbers)."""
        import av

        wanted = sorted(set(indices))
        found: dict[int, Source] = {}
        error: Exception | None = None
        try:
            with av.open(path) as container:
                for number, frame in enumerate(container.decode(video=0)):
                    if number in wanted:
                        found[number] = Source(frame.to_ndarray(format="rgb24"))
                    if number >= wanted[-1]:
                        break
        except Exception as err:  # noqa: BLE001 - frames decoded before a damaged packet still count
            error = err
        for index in indices:
            yield found[index] if index in found else (error or IndexError(f"frame {index} is past the video's end"))

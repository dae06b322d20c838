"""The decode worker: one video file in, pixel_values ``[T, 3, S, S]`` float32 (.npy) out, in its own
process so that the server can kill a decoder that hangs (PyAV holds the GIL while decoding).

    python -m prunevid.serve.decode_worker VIDEO OUT.npy PREPROCESSOR_JSON IMAGE_SIZE FRAMES \
        MAX_SECONDS MAX_PIXELS DELAY_S

Exit status 0: written; 3: not a usable video (message on stderr); 4: over a size or duration cap.
``DELAY_S`` is fault injection for tests (a decoder that takes that long). Imports no torch.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from prunevid.serve.media import EXIT_BAD_VIDEO, EXIT_TOO_LARGE


class TooLarge(Exception):
    """The clip is over a frame-size or duration cap."""


def probe(path: Path, max_seconds: float, max_pixels: int) -> None:
    """Refuse from the container header a clip over the caps, before decoding any frame.
    (A header can lie; the server's wall-clock limit covers the rest.)"""
    import av

    from prunevid.errors import VideoError
    from prunevid.runtime.video import SELF_CONTAINED_FORMATS, _av_errors, _open_options

    try:
        with av.open(str(path), options=_open_options(SELF_CONTAINED_FORMATS)) as container:
            if not container.streams.video:
                raise VideoError("no video stream in the file")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            if width * height > max_pixels:
                raise TooLarge(f"frames of {width}x{height} are over the {max_pixels}-pixel limit")
            seconds = None
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                seconds = container.duration / 1e6
            if seconds is not None and seconds > max_seconds:
                raise TooLarge(f"the clip lasts {seconds:.1f} s, over the {max_seconds:g} s limit")
    except _av_errors() as exc:
        raise VideoError(f"cannot open the video as a self-contained container ({', '.join(SELF_CONTAINED_FORMATS)}; "
                         f"no playlists): {' '.join(str(exc).split())}") from None


def main(argv: list[str]) -> int:
    import numpy as np

    from prunevid.errors import PruneVidError
    from prunevid.runtime.video import SELF_CONTAINED_FORMATS, Preprocess, load_video

    video, out, preprocessor, image_size, frames, max_seconds, max_pixels, delay = argv
    if float(delay) > 0:
        time.sleep(float(delay))
    try:
        probe(Path(video), float(max_seconds), int(max_pixels))
        # only self-contained containers: a playlist (HLS, concat) under --media-dir would make FFmpeg
        # read the files it lists, wherever they are
        pixels = load_video(video, int(frames), Preprocess.from_json(preprocessor, int(image_size)),
                            SELF_CONTAINED_FORMATS)  # [T, 3, S, S]
    except TooLarge as exc:
        print(exc, file=sys.stderr)
        return EXIT_TOO_LARGE
    except PruneVidError as exc:
        print(" ".join(str(exc).replace(video, "the video").split()), file=sys.stderr)
        return EXIT_BAD_VIDEO
    with open(out, "wb") as f:
        np.save(f, pixels.astype(np.float32))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

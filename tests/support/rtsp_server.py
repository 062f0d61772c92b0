"""A GStreamer RTSP server on 127.0.0.1 for tests: live H.264 video (+ AAC audio).

Run it with the system Python, which can import ``gi`` (GStreamer's bindings), not with
the project's virtual environment::

    /usr/bin/python3 rtsp_server.py --port 8554 --mount /live [--no-audio]

It prints ``READY rtsp://127.0.0.1:PORT/MOUNT`` once it accepts connections and serves
until killed. Kept free of project imports on purpose.
"""
import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def file_launch_line(path: str, audio: bool) -> str:
    """Serve an MP4 (H.264 [+ AAC]) at its own pace, as a camera would deliver it."""
    video = (f'filesrc location="{path}" ! qtdemux name=d d.video_0 ! queue ! h264parse '
             "! rtph264pay name=pay0 pt=96 config-interval=1")
    if not audio:
        return f"( {video} )"
    return f"( {video} d.audio_0 ! queue ! aacparse ! rtpmp4gpay name=pay1 pt=97 )"


def launch_line(width: int, height: int, fps: int, audio: bool, tone_hz: float) -> str:
    video = (f"videotestsrc is-live=true pattern=ball ! video/x-raw,width={width},height={height},"
             f"framerate={fps}/1 ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} "
             "! rtph264pay name=pay0 pt=96")
    if not audio:
        return f"( {video} )"
    sound = (f"audiotestsrc is-live=true wave=sine freq={tone_hz} volume=0.5 ! audio/x-raw,rate=16000,channels=1 "
             "! avenc_aac ! rtpmp4gpay name=pay1 pt=97")
    return f"( {video} {sound} )"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mount", default="/live")
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--tone-hz", type=float, default=440.0)
    ap.add_argument("--no-audio", action="store_true")
    ap.add_argument("--file", help="serve this MP4 (H.264 + AAC) instead of test patterns")
    args = ap.parse_args()
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    if args.file:
        factory.set_launch(file_launch_line(args.file, not args.no_audio))
    else:
        factory.set_launch(launch_line(args.width, args.height, args.fps, not args.no_audio, args.tone_hz))
    factory.set_shared(True)  # several readers see one live pipeline, like a camera
    server.get_mount_points().add_factory(args.mount, factory)
    if server.attach(None) == 0:
        print(f"ERROR cannot listen on 127.0.0.1:{args.port}", flush=True)
        return 1
    print(f"READY rtsp://127.0.0.1:{args.port}{args.mount}", flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

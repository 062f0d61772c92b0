"""Helpers for tests and benchmarks: generated media with known content, a local RTSP
server, an ALSA capture device fed from a file. Nothing here is used while streaming."""

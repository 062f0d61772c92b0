"""Many streams on a Ray cluster: ``salstream serve`` (the optional ``serve`` extra).

One process serves the streams it opened on one machine (:mod:`salstream.streamer.live`);
this package spreads streams over *replicas*, Ray actors placed across the machines of a
Ray cluster. Each replica runs the unchanged live :class:`~salstream.streamer.live.pipeline.Pipeline`
(ingest, window assembly, the two-stage scheduler that batches its streams' windows) for
the streams pinned to it, so a stream's ring buffer and feature cache never leave the
replica that holds it. Maps go from each replica to the driver's forwarder over ZeroMQ
and leave on ``--publish`` in the same wire format (version 1) as ``salstream run``.

:mod:`~salstream.serve.controller` (driver side) assigns streams, watches replica health
and moves the streams of a lost replica to live ones; the first map after a move carries
``flags.gap`` and the missing PTS range. Only the driver-side modules import Ray, and only
when a cluster is started.
"""

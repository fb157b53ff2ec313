"""Prometheus metrics of every stage, in one registry per process, served over HTTP."""

from __future__ import annotations

import errno

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from pgr.errors import PortInUse, Unavailable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def counter_total(counter: Counter) -> float:
    """The sum of a counter over all its label values."""
    return sum(s.value for s in counter.collect()[0].samples if s.name.endswith("_total"))


class ServedRegistry:
    """A process' own registry of metrics, which it can serve over HTTP."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics; returns the bound port (port 0 picks a free one). Raises PortInUse (one line)
        when the port is taken, Unavailable when the host cannot be bound."""
        try:
            server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            where = f"metrics port {port} on {host}"
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(
                    f"{where} is in use: set metrics.port (PGR_METRICS_PORT), 0 picks one"
                ) from None
            raise Unavailable(f"cannot serve {where}: {exc.strerror} (metrics.host, metrics.port)") from None
        return server.server_address[1]


class PipelineMetrics(ServedRegistry):
    """The counters and histograms the stages update. Each service process owns one instance."""

    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.frames_read = Counter("pgr_frames_read", "Frames decoded", ["camera"], registry=r)
        self.frames_detected = Counter(
            "pgr_frames_detected", "Frames that went through the person detector", ["camera"], registry=r
        )
        self.detector_batches = Counter(
            "pgr_detector_batches",
            "Detector inferences (each over frames of up to detect_batch cameras)",
            registry=r,
        )
        self.frames_dropped = Counter(
            "pgr_frames_dropped",
            "Frames lost: corrupt, unreadable, behind (a live camera's frame replaced by a newer one before "
            "the detector took it), error (the detector failed)",
            ["camera", "reason"],
            registry=r,
        )
        self.camera_retries = Counter(
            "pgr_camera_retries", "Camera (re)open attempts that failed", ["camera"], registry=r
        )
        self.camera_reconnects = Counter(
            "pgr_camera_reconnects", "Live streams that dropped and were reopened", ["camera"], registry=r
        )
        self.camera_up = Gauge(
            "pgr_camera_up",
            "1 while the camera is open, 0 while it is not (absent once a file source has ended)",
            ["camera"],
            registry=r,
        )
        self.detections = Counter("pgr_detections", "Persons detected", ["camera"], registry=r)
        self.crops_published = Counter(
            "pgr_crops_published", "Crop records published", ["camera"], registry=r
        )
        self.features_extracted = Counter("pgr_features_extracted", "Feature records published", registry=r)
        self.crops_sampled_out = Counter(
            "pgr_crops_sampled_out",
            "Crops of a track the re-ID stage did not extract (reid.sample_every_s)",
            registry=r,
        )
        self.crops_shed = Counter(
            "pgr_crops_shed",
            "Crops the re-ID stage did not extract because it was behind (reid.shed_after_s)",
            registry=r,
        )
        self.crops_rescued = Counter(
            "pgr_crops_rescued",
            "Shed crops extracted after all: the best of a track that ended with none extracted "
            "(reid.shed_rescue_tracks)",
            registry=r,
        )
        self.crops_rescue_dropped = Counter(
            "pgr_crops_rescue_dropped",
            "Shed crops kept for rescue and let go because more tracks waited (reid.shed_rescue_tracks)",
            registry=r,
        )
        self.sightings = Counter(
            "pgr_sightings",
            "Shed crops the matcher heard of (no features): they keep their track's tracklet going",
            registry=r,
        )
        self.records_indexed = Counter(
            "pgr_records_indexed", "Feature records written to the index", registry=r
        )
        self.index_write_errors = Counter(
            "pgr_index_write_errors",
            "Index writes that failed: unavailable (an attempt the index did not answer; the batch is "
            "retried) or refused (a row the index refused; the record is dead-lettered)",
            ["reason"],
            registry=r,
        )
        self.gallery_size = Gauge(
            "pgr_gallery_size", "Detections in the index, as the matcher last counted them", registry=r
        )
        self.consumer_lag = Gauge(
            "pgr_consumer_lag",
            "Records of a partition the stage's consumer group has not committed (end offset minus the "
            "group's committed offset), per partition this consumer owns",
            ["stage", "topic", "partition"],
            registry=r,
        )
        self.records_deleted = Counter(
            "pgr_records_deleted",
            "Records the stage deleted from the broker once every consumer group had committed them "
            "(transport.delete_consumed)",
            ["stage", "topic"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "pgr_dead_lettered", "Malformed records sent to the dead-letter topic", ["stage"], registry=r
        )
        self.stage_latency = Histogram(
            "pgr_stage_latency_seconds",
            "Time spent per item in each stage (decode, detect, track: tracking and crops, extract, index)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.end_to_end_latency = Histogram(
            "pgr_frame_to_searchable_seconds",
            "From frame read (record timestamp of a live source) to the record being searchable",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

        self.records_erased = Counter(
            "pgr_records_erased",
            "Feature records the matcher dropped: their detection or local track was erased on request",
            registry=r,
        )
        self.identity_events = Counter(
            "pgr_identity_events",
            "Identity events (created, joined, moved, merged, confirmed)",
            ["kind"],
            registry=r,
        )
        self.tracklet_input_refused = Counter(
            "pgr_tracklet_input",
            "Odd crops the tracklets counted: unknown_camera, out_of_order, late, track_restart, duplicate; "
            "and sightings: sighting_unmatched (no crop followed), sighting_rescued (a late crop did)",
            ["reason"],
            registry=r,
        )
        self.tracklet_end_to_identity = Histogram(
            "pgr_tracklet_end_to_identity_seconds",
            "From the frame read of a tracklet's last crop to its identity decision at the tracklet's end",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )


class ServeMetrics(ServedRegistry):
    """The search server's metrics (`pgr serve`, when `serve.metrics_port` is set)."""

    def __init__(self) -> None:
        super().__init__()
        self.search_latency = Histogram(
            "pgr_search_seconds",
            "Time to answer a search (POST /api/search): the query's features and the ranking",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

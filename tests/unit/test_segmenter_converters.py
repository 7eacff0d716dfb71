"""Protobuf conversion of the segmenter (and the trainer's encoder messages)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from foresight.api.common.v1 import common_pb2
from foresight.api.segmenter.v1 import segmenter_pb2 as pb
from foresight.api.trainer.v1 import trainer_pb2 as tpb
from foresight.cluster_map import ClusterMap, MapPoint
from foresight.encoder.registry import EncoderVersionInfo
from foresight.errors import InvalidArgument
from foresight.storage.lifecycle import Status
from services.segmenter import converters as conv
from services.segmenter.discovery_types import ClusterInfo, DiscoveryInfo, Trait
from services.segmenter.index_types import IndexInfo
from services.segmenter.queries import Expansion, Neighbor, Placement, ReachPoint
from services.trainer import encoder_converters as econv

pytestmark = pytest.mark.unit

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
TRAIT = Trait("channel:mobile", "Mostly mobile", 80.0, 20.0, 4.0, 40)
CLUSTER = ClusterInfo(2, 7, "Mostly mobile", 50, 0.25, [TRAIT], [TRAIT])


def test_index_info() -> None:
    info = IndexInfo(3, "shop", "cosine", 32, 16, 100, 128, 2, 1000, "ab" * 32, NOW, NOW)
    msg = conv.index_info_to_pb(info)
    assert (msg.version, msg.dimensions, msg.m, msg.ef, msg.count) == (3, 32, 16, 128, 1000)
    assert msg.built_at.ToDatetime(tzinfo=UTC) == NOW


def test_discovery_cluster_and_views() -> None:
    msg = conv.discovery_to_pb(DiscoveryInfo(7, 3, [CLUSTER], "auto: silhouette 0.4 at k=5", NOW))
    c = msg.clusters[0]
    assert (c.cluster_id, c.name, c.size, c.share) == (2, "Mostly mobile", 50, 0.25)
    assert c.influence[0].lift == 4.0 and c.popularity[0].count == 40
    assert conv.view_from_pb(pb.CLUSTER_VIEW_INFLUENCE) == "influence"
    assert conv.view_from_pb(pb.CLUSTER_VIEW_POPULARITY) == "popularity"
    assert conv.view_from_pb(pb.CLUSTER_VIEW_UNSPECIFIED) == "both"


def test_queries_and_map_round_trip() -> None:
    placed = conv.placement_to_pb(Placement(1, "x", 0.1, [Neighbor("a", 0.9)]))
    assert placed.nearest[0].profile_id == "a" and placed.cluster_id == 1
    exp = conv.expansion_to_pb(Expansion([Neighbor("b", 0.8)], [ReachPoint(0.8, 1)], ["z"], 3, 2))
    assert exp.unknown_seed_ids == ["z"] and exp.reach[0].audience_size == 1
    cmap = ClusterMap(7, [MapPoint("p", 1.0, 2.0, 2)], [CLUSTER], "pca")
    vis = conv.visualization_to_pb(cmap)
    assert [(p.profile_id, p.x, p.y, p.cluster_id) for p in vis.points] == [("p", 1.0, 2.0, 2)]
    assert (vis.discovery_version, vis.projection) == (7, "pca")
    assert conv.cluster_to_pb(CLUSTER) == vis.clusters[0]


def test_upsert_request_keeps_events_or_asks_for_stored_ones() -> None:
    ts = Timestamp()
    ts.FromDatetime(NOW)
    req = pb.UpsertProfilesRequest(
        profiles=[
            pb.ProfileJourney(profile_id="a"),
            pb.ProfileJourney(
                profile_id="b",
                events=[common_pb2.Event(profile_id="b", timestamp=ts, event_type="x")],
            ),
        ]
    )
    profiles = conv.upsert_request(req)
    assert profiles[0].events is None
    assert profiles[1].events is not None and profiles[1].events.height == 1


def test_encoder_version_messages() -> None:
    info = EncoderVersionInfo(
        4, Status.READY, "shop", 32, "pca", {"pca.silhouette": 0.4}, "encoders/v4", None, NOW
    )
    msg = econv.encoder_version_to_pb(info)
    assert msg.status == common_pb2.JOB_STATUS_READY and msg.kind == tpb.ENCODER_KIND_PCA
    assert msg.metrics["pca.silhouette"] == pytest.approx(0.4)
    assert econv.encoder_version_event(info).WhichOneof("event") == "version"
    assert econv.kind_from_pb(tpb.ENCODER_KIND_UNSPECIFIED) == "auto"
    assert econv.kind_from_pb(tpb.ENCODER_KIND_AUTOENCODER) == "autoencoder"
    with pytest.raises(InvalidArgument):
        econv.kind_from_pb(99)

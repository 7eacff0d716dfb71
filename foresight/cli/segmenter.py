"""Segmenter commands: encoder, index, discovery, clusters, similar profiles, lookalikes, map."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import polars as pl
import typer

from foresight.api.segmenter.v1 import segmenter_pb2
from foresight.api.trainer.v1 import trainer_pb2
from foresight.cli.app import app, client, console, follow, waiting
from foresight.cli.output import CsvFlag, JsonFlag, Rows, emit
from foresight.client import to_plain


@app.command("train-encoder")
def train_encoder(
    dataset: str,
    dimensions: Annotated[int, typer.Option(help="Embedding size (0 = chosen).")] = 0,
    as_json: JsonFlag = False,
) -> None:
    """Fit the journey encoder (chosen by measurement) and export it as ONNX."""
    with client() as c:
        stream = c.trainer.TrainEncoder(
            trainer_pb2.TrainEncoderRequest(dataset=dataset, dimensions=dimensions)
        )
        encoder = follow(stream, "encoder")
    emit(encoder, as_json=as_json)


@app.command("build-index")
def build_index(dataset: str, as_json: JsonFlag = False) -> None:
    """Embed every profile and build the HNSW index."""
    with client() as c:
        stream = c.segmenter.BuildIndex(segmenter_pb2.BuildIndexRequest(dataset=dataset))
        info = follow(stream, "index")
    emit(info, as_json=as_json)


def _cluster_rows(clusters: list[dict[str, Any]]) -> Rows:
    return Rows(
        ("cluster", "name", "size", "share %", "high influence", "high popularity"),
        [
            (
                c["cluster_id"],
                c["name"],
                c["size"],
                round(100 * c["share"], 1),
                "; ".join(f"{t['description']} ×{t['lift']:.1f}" for t in c["influence"][:3]),
                "; ".join(f"{t['description']} ({t['count']:,})" for t in c["popularity"][:3]),
            )
            for c in clusters
        ],
    )


@app.command()
def discover(
    clusters: Annotated[int, typer.Option(help="0 = choose automatically.")] = 0,
    as_json: JsonFlag = False,
    as_csv: CsvFlag = False,
) -> None:
    """Discover segments; print each with its High Influence and High Popularity traits."""
    with client() as c:
        d = follow(
            c.segmenter.DiscoverSegments(segmenter_pb2.DiscoverSegmentsRequest(clusters=clusters)),
            "discover",
        )
    rows = _cluster_rows(to_plain(d)["clusters"])
    emit(
        d,
        as_json=as_json,
        as_csv=as_csv,
        rows=rows,
        summary=f"discovery v{d.version}: {d.chosen_by}",
    )


@app.command("clusters")
def list_clusters(
    discovery: Annotated[int, typer.Option(help="Discovery version (0 = latest).")] = 0,
    as_json: JsonFlag = False,
    as_csv: CsvFlag = False,
) -> None:
    """List the clusters of a discovery with their traits."""
    with client() as c:
        resp = c.segmenter.ListClusters(
            segmenter_pb2.ListClustersRequest(discovery_version=discovery)
        )
    rows = _cluster_rows(to_plain(resp)["clusters"])
    emit(resp, as_json=as_json, as_csv=as_csv, rows=rows)


@app.command("save-cluster-segment")
def save_cluster_segment(
    cluster: Annotated[int, typer.Argument(help="Cluster id (see `foresight clusters`).")],
    name: Annotated[str, typer.Argument(help="Name of the new segment.")],
    discovery: Annotated[int, typer.Option(help="Discovery version (0 = latest).")] = 0,
    as_json: JsonFlag = False,
) -> None:
    """Save a cluster's members as a segment (to export or expand)."""
    with client() as c:
        resp = c.segmenter.SaveClusterSegment(
            segmenter_pb2.SaveClusterSegmentRequest(
                discovery_version=discovery, cluster_id=cluster, name=name
            )
        )
    emit(resp, as_json=as_json, summary=f"saved segment {resp.name}: {resp.size:,} profiles")


def _neighbor_rows(neighbors: list[segmenter_pb2.Neighbor]) -> Rows:
    return Rows(
        ("rank", "profile", "similarity"),
        [(i, n.profile_id, round(n.similarity, 4)) for i, n in enumerate(neighbors, 1)],
    )


@app.command()
def similar(
    profile_id: str,
    k: Annotated[int, typer.Option(min=1, max=1000, help="How many.")] = 10,
    as_json: JsonFlag = False,
    as_csv: CsvFlag = False,
) -> None:
    """The profiles whose journeys are most similar to one profile's."""
    with client() as c:
        resp = c.segmenter.FindSimilar(segmenter_pb2.FindSimilarRequest(profile_id=profile_id, k=k))
    emit(resp, as_json=as_json, as_csv=as_csv, rows=_neighbor_rows(list(resp.neighbors)))


@app.command()
def expand(
    segment: Annotated[str, typer.Option(help="Seed: a stored segment.")] = "",
    profile: Annotated[
        list[str] | None, typer.Option(help="Seed: profile ids (repeatable).")
    ] = None,
    target_size: Annotated[int, typer.Option(min=0, help="Lookalikes wanted.")] = 0,
    target_multiple: Annotated[
        float,
        typer.Option(
            min=0,
            help="Lookalikes wanted as a multiple of the seed size. Default (both 0): "
            "5 × seed, at most a tenth of the other profiles.",
        ),
    ] = 0.0,
    min_similarity: Annotated[float, typer.Option(min=0, max=1)] = 0.0,
    out: Annotated[
        Path | None, typer.Option(help="Write the lookalikes to this .csv or .parquet file.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Lookalikes of a seed, with the reach curve up to the target."""
    if bool(segment) == bool(profile):
        raise typer.BadParameter("give a seed: --segment NAME or --profile ID (repeatable)")
    if out is not None and out.suffix not in (".csv", ".parquet"):
        raise typer.BadParameter("must end in .csv or .parquet", param_hint="--out")
    request = segmenter_pb2.ExpandSegmentRequest(
        target_size=target_size, target_multiple=target_multiple, min_similarity=min_similarity
    )
    if segment:
        request.segment = segment
    else:
        request.profile_ids.profile_ids.extend(profile or [])
    with client() as c, waiting("expand"):
        resp = c.segmenter.ExpandSegment(request)
    if out is not None:
        _write_lookalikes(list(resp.lookalikes), out)
    summary = (
        f"seed {resp.seed_size:,}, {len(resp.lookalikes):,} lookalikes, {resp.query_points} query points"
        + (
            f"; unknown seed ids: {list(resp.unknown_seed_ids)[:10]}"
            if resp.unknown_seed_ids
            else ""
        )
        + (f"; lookalikes written to {out}" if out is not None else "")
    )
    reach = Rows(
        ("similarity ≥", "audience"),
        [(round(r.similarity, 4), r.audience_size) for r in resp.reach],
        title="reach curve",
    )
    emit(resp, as_json=as_json, summary=summary, extra=[reach])


def _write_lookalikes(lookalikes: list[segmenter_pb2.Neighbor], out: Path) -> None:
    frame = pl.DataFrame(
        {
            "rank": list(range(1, len(lookalikes) + 1)),
            "profile_id": [n.profile_id for n in lookalikes],
            "similarity": [n.similarity for n in lookalikes],
        },
        schema={"rank": pl.Int64, "profile_id": pl.String, "similarity": pl.Float64},
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        frame.write_parquet(out)
    else:
        frame.write_csv(out)


@app.command("cluster-map")
def cluster_map(
    out: Annotated[
        Path, typer.Option(help="Folder for cluster-map.html and cluster-map.png.")
    ] = Path("reports"),
    sample_size: Annotated[int, typer.Option(min=1, max=50_000)] = 5_000,
) -> None:
    """Write the cluster map as PNG and a self-contained HTML page."""
    from foresight.tools.mapview import write_map

    with client() as c:
        vis = c.segmenter.GetVisualization(
            segmenter_pb2.GetVisualizationRequest(sample_size=sample_size)
        )
    page, png = write_map(vis, out)
    console.print(f"wrote {page} and {png}")

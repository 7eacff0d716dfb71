"""Segmenter commands: encoder, index, discovery, expansion, cluster map."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from foresight.api.segmenter.v1 import segmenter_pb2
from foresight.api.trainer.v1 import trainer_pb2
from foresight.cli.app import app, client, console, follow, show


@app.command("train-encoder")
def train_encoder(dataset: str, dimensions: Annotated[int, typer.Option()] = 0) -> None:
    """Fit the journey encoder (chosen by measurement) and export it as ONNX."""
    with client() as c:
        stream = c.trainer.TrainEncoder(
            trainer_pb2.TrainEncoderRequest(dataset=dataset, dimensions=dimensions)
        )
        show(follow(stream, "encoder"))


@app.command("build-index")
def build_index(dataset: str) -> None:
    """Embed every profile and build the HNSW index."""
    with client() as c:
        show(
            follow(
                c.segmenter.BuildIndex(segmenter_pb2.BuildIndexRequest(dataset=dataset)), "index"
            )
        )


@app.command()
def discover(clusters: Annotated[int, typer.Option(help="0 = choose automatically.")] = 0) -> None:
    """Discover segments; print each with its High Influence and High Popularity traits."""
    with client() as c:
        d = follow(
            c.segmenter.DiscoverSegments(segmenter_pb2.DiscoverSegmentsRequest(clusters=clusters)),
            "discover",
        )
    console.print(f"discovery v{d.version}: {d.chosen_by}")
    for cl in d.clusters:
        console.print(f"[bold]#{cl.cluster_id} {cl.name}[/] {cl.size:,} ({100 * cl.share:.1f} %)")
        console.print(
            "  influence : " + "; ".join(f"{t.description} ×{t.lift:.1f}" for t in cl.influence[:4])
        )
        console.print(
            "  popularity: "
            + "; ".join(f"{t.description} ({t.count:,})" for t in cl.popularity[:4])
        )


@app.command()
def expand(
    segment: Annotated[str, typer.Option(help="Seed: a stored segment.")] = "",
    profile: Annotated[
        list[str] | None, typer.Option(help="Seed: profile ids (repeatable).")
    ] = None,
    target_size: Annotated[int, typer.Option()] = 0,
    min_similarity: Annotated[float, typer.Option()] = 0.0,
) -> None:
    """Lookalikes of a seed, with the reach curve."""
    request = segmenter_pb2.ExpandSegmentRequest(
        target_size=target_size, min_similarity=min_similarity
    )
    if segment:
        request.segment = segment
    else:
        request.profile_ids.profile_ids.extend(profile or [])
    with client() as c:
        resp = c.segmenter.ExpandSegment(request)
    console.print(
        f"seed {resp.seed_size:,}, {len(resp.lookalikes):,} lookalikes, {resp.query_points} query points"
    )
    if resp.unknown_seed_ids:
        console.print(f"unknown seed ids: {list(resp.unknown_seed_ids)[:10]}")
    for r in resp.reach:
        console.print(f"  similarity ≥ {r.similarity:.2f}: {r.audience_size:,}")


@app.command("cluster-map")
def cluster_map(
    out: Annotated[
        Path, typer.Option(help="Folder for cluster-map.html and cluster-map.png.")
    ] = Path("reports"),
    sample_size: Annotated[int, typer.Option()] = 5_000,
) -> None:
    """Write the cluster map as PNG and a self-contained HTML page."""
    from foresight.tools.mapview import write_map

    with client() as c:
        vis = c.segmenter.GetVisualization(
            segmenter_pb2.GetVisualizationRequest(sample_size=sample_size)
        )
    page, png = write_map(vis, out)
    console.print(f"wrote {page} and {png}")

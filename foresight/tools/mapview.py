"""The cluster map as pictures: a PNG scatter plot and a self-contained HTML page.

The page needs no network: data, script and style are inline. A person
selects clusters one by one or together and switches between the High
Influence and High Popularity views. `write_map` renders a GetVisualization
reply; the data types (`ClusterMap`, `MapPoint`) live in `foresight.cluster_map`,
shared with the segmenter, which builds the same map from its index.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Final

import numpy as np

from foresight.api.segmenter.v1 import segmenter_pb2
from foresight.cluster_map import ClusterMap, MapCluster, MapPoint

PALETTE: Final[tuple[str, ...]] = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
    "#1f77b4",
    "#8c564b",
    "#17becf",
    "#bcbd22",
    "#d62728",
)


def color(cluster_id: int) -> str:
    """The colour of a cluster, the same in the PNG and the page."""
    return PALETTE[cluster_id % len(PALETTE)]


# ---------------------------------------------------------------- PNG


def map_title(cmap: ClusterMap[MapCluster]) -> str:
    """What the map shows and what its axes are."""
    method = "principal components (PCA)" if cmap.projection == "pca" else cmap.projection
    return (
        f"Discovered segments v{cmap.discovery_version}: each dot is a profile's journey "
        f"embedding, x and y its first two {method} of the sample"
    )


def axis_labels(cmap: ClusterMap[MapCluster]) -> tuple[str, str]:
    """Labels of the two axes."""
    name = "principal component" if cmap.projection == "pca" else f"{cmap.projection} axis"
    return f"{name} 1 of the journey embeddings", f"{name} 2 of the journey embeddings"


def write_png(cmap: ClusterMap[MapCluster], path: Path, title: str | None = None) -> Path:
    """Scatter plot of the map, one colour per cluster, legend with names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {c.cluster_id: c.name for c in cmap.clusters}
    fig, ax = plt.subplots(figsize=(11, 7.5), dpi=110)
    try:
        xs = np.array([p.x for p in cmap.points])
        ys = np.array([p.y for p in cmap.points])
        cs = np.array([p.cluster_id for p in cmap.points])
        for c in sorted(set(cs.tolist())):
            sel = cs == c
            label = f"{c}: {names.get(c, '?')} ({int(sel.sum())})"
            ax.scatter(xs[sel], ys[sel], s=6, alpha=0.6, color=color(c), label=label, linewidths=0)
        ax.set_title(title or map_title(cmap), fontsize=10, wrap=True)
        x_label, y_label = axis_labels(cmap)
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, markerscale=2)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


# ---------------------------------------------------------------- HTML


def _page_data(cmap: ClusterMap[MapCluster]) -> dict[str, Any]:
    return {
        "version": cmap.discovery_version,
        "projection": cmap.projection,
        "clusters": [
            {
                "id": c.cluster_id,
                "name": c.name,
                "size": c.size,
                "share": c.share,
                "color": color(c.cluster_id),
                "influence": [
                    {
                        "code": t.code,
                        "text": t.description,
                        "pct": t.cluster_percent,
                        "pop": t.population_percent,
                        "lift": t.lift,
                        "count": t.count,
                    }
                    for t in c.influence
                ],
                "popularity": [
                    {
                        "code": t.code,
                        "text": t.description,
                        "pct": t.cluster_percent,
                        "pop": t.population_percent,
                        "lift": t.lift,
                        "count": t.count,
                    }
                    for t in c.popularity
                ],
            }
            for c in sorted(cmap.clusters, key=lambda c: c.cluster_id)
        ],
        # Columns keep the page small: x, y, cluster per point.
        "x": [round(p.x, 4) for p in cmap.points],
        "y": [round(p.y, 4) for p in cmap.points],
        "c": [p.cluster_id for p in cmap.points],
    }


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
header{padding:12px 20px;background:#1f2937;color:#fff}
header h1{font-size:18px;margin:0}
header p{margin:4px 0 0;font-size:13px;color:#cbd5e1}
main{display:flex;gap:16px;padding:16px}
#side{width:330px;flex:none}
#side h2,#details h2{font-size:14px;margin:8px 0}
.cl{display:flex;align-items:center;gap:6px;padding:4px 6px;border-radius:4px;cursor:pointer;font-size:13px}
.cl:hover{background:#eef2f7}
.sw{width:12px;height:12px;border-radius:2px;flex:none}
.cl .sz{margin-left:auto;color:#666;font-variant-numeric:tabular-nums}
.buttons{display:flex;gap:6px;margin:6px 0 10px}
button{font-size:12px;padding:3px 8px}
.views label{margin-right:12px;font-size:13px}
#plot{background:#fff;border:1px solid #ddd;border-radius:4px}
#details{flex:1;min-width:320px}
.card{background:#fff;border:1px solid #ddd;border-left-width:6px;border-radius:4px;padding:8px 12px;margin-bottom:10px}
.card h3{font-size:14px;margin:0 0 4px}
.card .meta{font-size:12px;color:#555;margin-bottom:6px}
table{border-collapse:collapse;width:100%;font-size:12px}
th,td{text-align:left;padding:2px 6px;border-bottom:1px solid #eee}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.empty{color:#777;font-size:13px}
"""

_SCRIPT = r"""
(function(){
const D = JSON.parse(document.getElementById('map-data').textContent);
const byId = new Map(D.clusters.map(c => [c.id, c]));
const state = {selected: new Set(), view: 'influence'};
const canvas = document.getElementById('plot');
const ctx = canvas.getContext('2d');
const fmt = n => n.toLocaleString('en-US');
function bounds(v){let lo=Infinity,hi=-Infinity;for(const a of v){if(a<lo)lo=a;if(a>hi)hi=a;}if(!isFinite(lo)){lo=0;hi=1;}if(hi===lo){hi=lo+1;}return [lo,hi];}
const [x0,x1] = bounds(D.x), [y0,y1] = bounds(D.y);
function draw(){
  const W = canvas.width, H = canvas.height, pad = 12;
  ctx.clearRect(0,0,W,H);
  const any = state.selected.size > 0;
  const order = [];
  for (let i=0;i<D.c.length;i++){ order.push(i); }
  // Unselected points first (grey, underneath), selected ones on top.
  order.sort((a,b) => (state.selected.has(D.c[a])?1:0) - (state.selected.has(D.c[b])?1:0));
  let highlighted = 0;
  for (const i of order){
    const c = D.c[i], on = !any || state.selected.has(c);
    if (on) highlighted++;
    const cl = byId.get(c);
    ctx.fillStyle = on ? (cl ? cl.color : '#333') : '#d9d9d9';
    ctx.globalAlpha = on ? 0.75 : 0.35;
    const px = pad + (D.x[i]-x0)/(x1-x0)*(W-2*pad);
    const py = H - pad - (D.y[i]-y0)/(y1-y0)*(H-2*pad);
    ctx.fillRect(px-1.5, py-1.5, 3, 3);
  }
  ctx.globalAlpha = 1;
  // How many points are drawn in colour (the rest grey): what the selector filtered.
  document.getElementById('status').dataset.highlighted = String(highlighted);
}
function traitTable(c){
  const rows = state.view === 'influence' ? c.influence : c.popularity;
  if (!rows.length) return '<p class="empty">No traits.</p>';
  const head = state.view === 'influence'
    ? '<tr><th>Trait</th><th>In cluster</th><th>Population</th><th>Lift</th></tr>'
    : '<tr><th>Trait</th><th>Profiles</th><th>In cluster</th></tr>';
  const body = rows.slice(0,10).map(t => state.view === 'influence'
    ? `<tr class="trait" data-code="${esc(t.code)}"><td>${esc(t.text)}</td><td class="n">${t.pct.toFixed(1)}%</td><td class="n">${t.pop.toFixed(1)}%</td><td class="n">${t.lift.toFixed(2)}×</td></tr>`
    : `<tr class="trait" data-code="${esc(t.code)}"><td>${esc(t.text)}</td><td class="n">${fmt(t.count)}</td><td class="n">${t.pct.toFixed(1)}%</td></tr>`).join('');
  return `<table data-view="${state.view}">${head}${body}</table>`;
}
function esc(s){return String(s).replace(/[&<>"']/g, ch => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[ch]));}
function render(){
  for (const box of document.querySelectorAll('input.pick')){
    box.checked = state.selected.has(Number(box.value));
  }
  for (const r of document.querySelectorAll('input[name=view]')){ r.checked = r.value === state.view; }
  const details = document.getElementById('details-body');
  const chosen = D.clusters.filter(c => state.selected.has(c.id));
  const title = state.view === 'influence' ? 'High Influence traits' : 'High Popularity traits';
  document.getElementById('details-title').textContent = title;
  details.innerHTML = chosen.length ? chosen.map(c =>
    `<div class="card" id="card-${c.id}" data-cluster="${c.id}" style="border-left-color:${c.color}">
       <h3 class="name">${esc(c.name)}</h3>
       <div class="meta">Cluster ${c.id} · ${fmt(c.size)} profiles · ${(100*c.share).toFixed(1)}% of the population</div>
       ${traitTable(c)}</div>`).join('')
    : '<p class="empty" id="nothing">Select one or more clusters to see their traits.</p>';
  const status = document.getElementById('status');
  status.dataset.selected = [...state.selected].sort((a,b)=>a-b).join(',');
  status.dataset.view = state.view;
  draw();
}
function toHash(){
  const h = `clusters=${[...state.selected].sort((a,b)=>a-b).join(',')}&view=${state.view}`;
  if (location.hash.slice(1) !== h) history.replaceState(null, '', '#' + h);
}
function fromHash(){
  const params = new URLSearchParams(location.hash.slice(1));
  const cl = params.get('clusters');
  if (cl !== null){
    state.selected = new Set(cl.split(',').filter(s => s !== '').map(Number).filter(n => byId.has(n)));
  }
  const v = params.get('view');
  if (v === 'influence' || v === 'popularity') state.view = v;
}
function update(){ render(); toHash(); }
const list = document.getElementById('clusters');
list.innerHTML = D.clusters.map(c =>
  `<label class="cl" title="${esc(c.name)}"><input type="checkbox" class="pick" value="${c.id}" id="pick-${c.id}">
   <span class="sw" style="background:${c.color}"></span><span>${c.id}: ${esc(c.name)}</span>
   <span class="sz">${(100*c.share).toFixed(1)}%</span></label>`).join('');
list.addEventListener('change', e => {
  const box = e.target; if (!box.classList.contains('pick')) return;
  const id = Number(box.value);
  if (box.checked) state.selected.add(id); else state.selected.delete(id);
  update();
});
document.getElementById('all').onclick = () => { state.selected = new Set(D.clusters.map(c=>c.id)); update(); };
document.getElementById('none').onclick = () => { state.selected.clear(); update(); };
for (const r of document.querySelectorAll('input[name=view]')){
  r.addEventListener('change', () => { state.view = r.value; update(); });
}
window.addEventListener('hashchange', () => { fromHash(); render(); });
// API for tests and other pages: select clusters / switch view without clicking.
window.clusterMap = {select(ids){ state.selected = new Set(ids); update(); }, view(v){ state.view = v; update(); }, state};
fromHash();
render();
})();
"""


def render_html(cmap: ClusterMap[MapCluster], title: str | None = None) -> str:
    """The self-contained page (no external resources)."""
    data = json.dumps(_page_data(cmap), separators=(",", ":"))
    # JSON inside <script>: "</" must not close the element early.
    data = data.replace("</", "<\\/")
    heading = html.escape(title or map_title(cmap))
    sub = html.escape(
        f"Discovery v{cmap.discovery_version} · {len(cmap.points):,} sampled profiles · "
        f"{len(cmap.clusters)} clusters · projection: {cmap.projection}"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{heading}</title>
<style>{_STYLE}</style></head>
<body>
<header><h1>{heading}</h1><p>{sub}</p></header>
<main>
<section id="side">
<h2>Clusters</h2>
<div class="buttons"><button id="all" type="button">Select all</button><button id="none" type="button">Clear</button></div>
<div id="clusters"></div>
<h2>View</h2>
<div class="views">
<label><input type="radio" name="view" value="influence" id="view-influence" checked> High Influence</label>
<label><input type="radio" name="view" value="popularity" id="view-popularity"> High Popularity</label>
</div>
</section>
<section><canvas id="plot" width="640" height="520"></canvas></section>
<section id="details"><h2 id="details-title">High Influence traits</h2><div id="details-body"></div></section>
</main>
<div id="status" hidden></div>
<script type="application/json" id="map-data">{data}</script>
<script>{_SCRIPT}</script>
</body></html>
"""


def write_html(cmap: ClusterMap[MapCluster], path: Path, title: str | None = None) -> Path:
    """Write the page to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(cmap, title), encoding="utf-8")
    return path


def write_map(visualization: segmenter_pb2.Visualization, out_dir: Path) -> tuple[Path, Path]:
    """Write `cluster-map.html` and `cluster-map.png` for a GetVisualization reply."""
    cmap: ClusterMap[MapCluster] = ClusterMap(
        discovery_version=visualization.discovery_version,
        points=[MapPoint(p.profile_id, p.x, p.y, p.cluster_id) for p in visualization.points],
        clusters=list(visualization.clusters),
        projection=visualization.projection,
    )
    return write_html(cmap, out_dir / "cluster-map.html"), write_png(
        cmap, out_dir / "cluster-map.png"
    )

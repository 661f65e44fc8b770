"""The page at ``/``: drop or pick an image (or type a text) and see the top classes as bars.

One self-contained HTML file (no CDN, no build step: it must work offline and behind a firewall). It
reads /health and /metadata, asks for the bearer token when the server requires one (kept in this
tab's sessionStorage only), and renders every server text with textContent, never as HTML.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>headstart</title>
<style>
  :root { --fg:#1d2430; --muted:#667085; --line:#d0d5dd; --accent:#2e6bd9; --bg:#f7f8fa; }
  * { box-sizing: border-box; }
  body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); background: var(--bg);
         margin: 0; padding: 28px; }
  main { max-width: 760px; margin: 0 auto; }
  h1 { font-size: 20px; margin: 0 0 4px; } .muted { color: var(--muted); font-size: 13px; }
  .card { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 18px; margin-top: 16px; }
  #drop { border: 2px dashed var(--line); border-radius: 10px; padding: 28px; text-align: center; cursor: pointer; }
  #drop.over { border-color: var(--accent); background: #eef4ff; }
  textarea { width: 100%; min-height: 90px; font: inherit; padding: 8px; border: 1px solid var(--line); border-radius: 8px; }
  button { font: inherit; background: var(--accent); color: #fff; border: 0; border-radius: 8px; padding: 8px 16px;
           cursor: pointer; margin-top: 8px; }
  input[type=password] { font: inherit; padding: 6px; border: 1px solid var(--line); border-radius: 6px; width: 260px; }
  .result { display: flex; gap: 18px; align-items: flex-start; margin-top: 14px; }
  .result img { width: 140px; height: 140px; object-fit: cover; border-radius: 8px; border: 1px solid var(--line); }
  .bars { flex: 1; } .row { display: grid; grid-template-columns: 150px 1fr 64px; gap: 8px; align-items: center; margin: 5px 0; }
  .track { background: #edf0f5; border-radius: 5px; height: 16px; overflow: hidden; }
  .fill { background: var(--accent); height: 100%; } .row.best .label { font-weight: 600; }
  .num { text-align: right; font-variant-numeric: tabular-nums; }
  .error { color: #b42318; } .classes { font-size: 13px; color: var(--muted); }
</style>
</head>
<body>
<main>
  <h1 id="title">headstart</h1>
  <div class="muted" id="subtitle">loading the model…</div>
  <div class="card" id="auth" hidden>
    <label>Bearer token <input type="password" id="token" autocomplete="off"></label>
    <button id="save-token" type="button">Use token</button>
  </div>
  <div class="card">
    <div id="image-input" hidden>
      <div id="drop" tabindex="0">Drop an image here, or <u>pick one</u>
        <input type="file" id="file" accept="image/*" multiple hidden></div>
    </div>
    <div id="text-input" hidden>
      <textarea id="text" placeholder="Type a text to classify"></textarea>
      <button id="classify" type="button">Classify</button>
    </div>
    <div id="status" class="muted" role="status"></div>
    <div id="results"></div>
  </div>
  <div class="card classes" id="classes"></div>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("headstart-token") || "";
const headers = () => (token ? { Authorization: "Bearer " + token } : {});

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

async function call(path, options) {
  const r = await fetch(path, { ...options, headers: { ...headers(), ...((options || {}).headers || {}) } });
  const body = await r.json().catch(() => ({ detail: r.statusText }));
  if (!r.ok) {
    if (r.status === 401) $("auth").hidden = false;
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    throw new Error(r.status + ": " + detail);
  }
  return body;
}

function showPrediction(p, imageUrl) {
  const box = el("div", "result");
  box.dataset.label = p.label;
  if (imageUrl) { const img = el("img"); img.src = imageUrl; img.alt = p.input; box.appendChild(img); }
  const bars = el("div", "bars");
  bars.appendChild(el("div", "muted", p.input));
  p.top.forEach((c, i) => {
    const row = el("div", "row" + (i === 0 ? " best" : ""));
    row.appendChild(el("span", "label", c.label));
    const track = el("div", "track"), fill = el("div", "fill");
    fill.style.width = (100 * c.probability).toFixed(1) + "%";
    track.appendChild(fill); row.appendChild(track);
    row.appendChild(el("span", "num", (100 * c.probability).toFixed(1) + "%"));
    bars.appendChild(row);
  });
  box.appendChild(bars);
  $("results").prepend(box);
}

async function predictFiles(files) {
  const form = new FormData();
  [...files].forEach((f) => form.append("files", f, f.name));
  $("status").textContent = "classifying " + files.length + " image(s)…";
  try {
    const t0 = performance.now();
    const out = await call("/predict?top=5", { method: "POST", body: form });
    out.predictions.forEach((p, i) => showPrediction(p, URL.createObjectURL(files[i])));
    $("status").textContent = "answered in " + Math.round(performance.now() - t0) + " ms";
  } catch (e) { $("status").textContent = ""; $("results").prepend(el("div", "error", e.message)); }
}

async function predictText() {
  const text = $("text").value.trim();
  if (!text) return;
  $("status").textContent = "classifying…";
  try {
    const out = await call("/predict?top=5", { method: "POST", headers: { "Content-Type": "application/json" },
                                                body: JSON.stringify({ texts: [text] }) });
    out.predictions[0].input = text.length > 80 ? text.slice(0, 80) + "…" : text;
    showPrediction(out.predictions[0]);
    $("status").textContent = "";
  } catch (e) { $("status").textContent = ""; $("results").prepend(el("div", "error", e.message)); }
}

async function loadModel() {
  try {
    const m = await call("/metadata");
    $("auth").hidden = true;
    $("title").textContent = m.model;
    $("subtitle").textContent = m.modality + " classifier · " + (m.backbone || "") + " · " + m.classes.length +
      " classes · " + m.engine;
    $("classes").textContent = "Classes: " + m.classes.join(", ");
    $(m.modality === "image" ? "image-input" : "text-input").hidden = false;
  } catch (e) { $("subtitle").textContent = e.message; }
}

$("save-token").onclick = () => { token = $("token").value; sessionStorage.setItem("headstart-token", token); loadModel(); };
const drop = $("drop");
drop.onclick = () => $("file").click();
drop.onkeydown = (e) => { if (e.key === "Enter" || e.key === " ") $("file").click(); };
$("file").onchange = (e) => { if (e.target.files.length) predictFiles(e.target.files); };
drop.ondragover = (e) => { e.preventDefault(); drop.classList.add("over"); };
drop.ondragleave = () => drop.classList.remove("over");
drop.ondrop = (e) => { e.preventDefault(); drop.classList.remove("over"); if (e.dataTransfer.files.length) predictFiles(e.dataTransfer.files); };
$("classify").onclick = predictText;
loadModel();
</script>
</body>
</html>
"""

// sketchembed studio: draw, see the model's guesses and nearest drawings after every stroke,
// replay a sketch stroke by stroke, and take the human test. Plain JS, no dependencies (works offline).
"use strict";

const $ = (id) => document.getElementById(id);
const SVGNS = "http://www.w3.org/2000/svg";
const K = 8;
const canvas = $("canvas");
const ctx = canvas.getContext("2d");

// The sketch on the canvas: strokes of {x, y, t} in canvas pixels (raw), or a stored drawing in
// Quick, Draw!'s simplified 0-255 frame (format "simplified", read-only) shown through a view that
// centres it with a margin (fitView): its points are where the canvas shows them as X = ox + x * scale.
const IDENTITY = { scale: 1, ox: 0, oy: 0 };
let sketch = { strokes: [], format: "raw", view: IDENTITY };
let current = null;      // the stroke being drawn
let t0 = null;           // time of the first point (ms), for the time row
let requestSeq = 0;      // answers to older requests than the latest are dropped
let predictions = 0;     // answers shown, a guess or "a single tap" (tests wait on body[data-predictions])
let replaying = false;

// ---------------------------------------------------------------------------------- helpers
async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const res = await fetch(path, opts);
  let data = null;
  try { data = await res.json(); } catch (e) { /* not JSON: reported below */ }
  if (!res.ok) {
    // every error is {"status", "code", "detail"} (studio/errors.py)
    const err = new Error((data && data.detail) || `${res.status} ${res.statusText}`);
    err.code = data && data.code;
    throw err;
  }
  return data;
}

// the server refuses a drawing whose points are all in one place with code "tap" (a single tap, such
// as a first stroke that is a dot). Not an error while drawing or replaying: there is nothing to guess yet.
const isTap = (err) => err.code === "tap";

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "muted";
}

function pct(p) { return `${(100 * p).toFixed(p >= 0.995 || p < 0.001 ? 0 : 1)} %`; }

function sketchSvg(drawing) {
  // drawing: [[[x...], [y...]], ...] on 0-255, shown centred in a square
  const xs = drawing.flatMap((s) => s[0]), ys = drawing.flatMap((s) => s[1]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const size = Math.max(x1 - x0, y1 - y0, 1), pad = size * 0.06;
  const svg = document.createElementNS(SVGNS, "svg");
  svg.setAttribute("viewBox", `${(x0 + x1 - size) / 2 - pad} ${(y0 + y1 - size) / 2 - pad} ${size + 2 * pad} ${size + 2 * pad}`);
  svg.setAttribute("class", "sketch");
  for (const [sx, sy] of drawing) {
    const pl = document.createElementNS(SVGNS, "polyline");
    pl.setAttribute("points", sx.map((x, i) => `${x},${sy[i]}`).join(" "));
    pl.setAttribute("stroke-width", (size / 60).toFixed(2));
    svg.appendChild(pl);
  }
  return svg;
}

// ---------------------------------------------------------------------------------- canvas
const LINE_WIDTH = 6;

function redraw(strokes = sketch.strokes, view = sketch.view, upto = Infinity) {
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.lineWidth = LINE_WIDTH; ctx.lineCap = "round"; ctx.lineJoin = "round"; ctx.strokeStyle = "#1d2330";
  const X = (x) => view.ox + x * view.scale, Y = (y) => view.oy + y * view.scale;
  strokes.forEach((s, i) => {
    const n = i === strokes.length - 1 ? Math.min(s.x.length, upto) : s.x.length;
    if (n === 0) return;
    ctx.beginPath();
    ctx.moveTo(X(s.x[0]), Y(s.y[0]));
    if (n === 1) ctx.lineTo(X(s.x[0]) + 0.1, Y(s.y[0]));
    for (let j = 1; j < n; j++) ctx.lineTo(X(s.x[j]), Y(s.y[j]));
    ctx.stroke();
  });
}

function fitView(strokes) {
  // the drawing's bounding box scaled to the canvas less a margin (8 % and the line's half width) and
  // centred: a stored drawing starts at 0, 0 and would sit in the top-left corner, its edge strokes cut
  const xs = strokes.flatMap((s) => s.x), ys = strokes.flatMap((s) => s.y);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const margin = 0.08 * canvas.width + LINE_WIDTH / 2;
  const scale = (canvas.width - 2 * margin) / Math.max(x1 - x0, y1 - y0, 1);
  return { scale, ox: canvas.width / 2 - scale * (x0 + x1) / 2, oy: canvas.height / 2 - scale * (y0 + y1) / 2 };
}

function canvasPoint(e) {
  const r = canvas.getBoundingClientRect();
  return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height];
}

function addPoint(e) {
  const [x, y] = canvasPoint(e);
  const now = e.timeStamp || performance.now();
  if (t0 === null) t0 = now;
  const n = current.x.length;
  if (n && current.x[n - 1] === x && current.y[n - 1] === y) return;
  current.x.push(Math.round(x * 10) / 10);
  current.y.push(Math.round(y * 10) / 10);
  current.t.push(Math.round(now - t0));
}

canvas.addEventListener("pointerdown", (e) => {
  if (replaying || e.button > 0) return;
  if (sketch.format !== "raw") { sketch = { strokes: [], format: "raw", view: IDENTITY }; t0 = null; redraw(); }
  canvas.setPointerCapture(e.pointerId);
  current = { x: [], y: [], t: [] };
  sketch.strokes.push(current);
  addPoint(e);
  redraw();
  e.preventDefault();
});

canvas.addEventListener("pointermove", (e) => {
  if (!current) return;
  const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [e];
  for (const ev of (events.length ? events : [e])) addPoint(ev);
  redraw();
  e.preventDefault();
});

function endStroke(e) {
  if (!current) return;
  if (e) addPoint(e);
  current = null;
  guessNow();
}
canvas.addEventListener("pointerup", endStroke);
canvas.addEventListener("pointercancel", () => endStroke(null));

function payload(strokes, format) {
  const drawing = strokes.map((s) => (format === "raw" ? [s.x, s.y, s.t] : [s.x, s.y]));
  return { drawing, k: K, format };
}

// ---------------------------------------------------------------------------------- guesses
function renderGuesses(res) {
  const ol = $("guesses");
  ol.replaceChildren();
  for (const c of res.classes) {
    const li = document.createElement("li");
    const name = document.createElement("span"); name.className = "name"; name.textContent = c.name;
    const bar = document.createElement("span"); bar.className = "bar";
    const fill = document.createElement("span"); fill.style.width = `${(100 * c.p).toFixed(1)}%`;
    bar.appendChild(fill);
    const p = document.createElement("span"); p.className = "p"; p.textContent = pct(c.p);
    li.append(name, bar, p);
    ol.appendChild(li);
  }
  $("by").textContent = `(${res.by}, ${res.n_strokes} strokes, ${res.n_points} points)`;
  const grid = $("neighbours");
  grid.replaceChildren();
  for (const nb of res.neighbours) {
    const card = document.createElement("div");
    card.className = "card";
    card.title = `key_id ${nb.key_id} — click to replay it`;
    const label = document.createElement("div"); label.textContent = nb.class;
    const dist = document.createElement("div"); dist.className = "dist"; dist.textContent = `d = ${nb.distance.toFixed(3)}`;
    card.append(sketchSvg(nb.drawing), label, dist);
    card.addEventListener("click", () => replayStored(nb.drawing, `(a ${nb.class} of the index)`, nb.class));
    grid.appendChild(card);
  }
  answered();
}

function answered() {
  predictions += 1;
  document.body.dataset.predictions = String(predictions);
}

function clearGuesses() {
  requestSeq += 1;
  $("guesses").replaceChildren();
  $("neighbours").replaceChildren();
  $("by").textContent = "";
}

async function guessNow() {
  const strokes = sketch.strokes.filter((s) => s.x.length > 0);
  if (!strokes.length) { clearGuesses(); return; }
  const seq = ++requestSeq;
  try {
    const res = await api("/api/predict", payload(strokes, sketch.format));
    if (seq !== requestSeq) return;
    renderGuesses(res);
    status(`${strokes.length} stroke${strokes.length > 1 ? "s" : ""}: ${res.classes[0].name}?`);
  } catch (err) {
    if (seq !== requestSeq) return;
    if (isTap(err)) { clearGuesses(); status("a single tap: keep drawing", false); answered(); }
    else status(err.message, true);
  }
}

// ---------------------------------------------------------------------------------- replay
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function replay(strokes, format, view, title, truth) {
  if (replaying || !strokes.length) return;
  replaying = true;
  clearGuesses();
  $("evolution").hidden = false;
  $("evolution-title").textContent = title || "";
  const steps = $("steps");
  steps.replaceChildren();
  const record = [];
  let target = truth;  // the class whose probability is plotted: the truth, else the latest top guess
  try {
    for (let i = 0; i < strokes.length; i++) {
      const shown = strokes.slice(0, i + 1);
      const n = strokes[i].x.length;
      for (let j = 1; j <= n; j += Math.max(1, Math.ceil(n / 12))) { redraw(shown, view, j); await sleep(16); }
      redraw(shown, view);
      let res = null;
      try {
        res = await api("/api/predict", payload(shown, format));
      } catch (err) {
        if (!isTap(err)) throw err;
      }
      const li = document.createElement("li");
      if (res) {
        renderGuesses(res);
        const top = res.classes[0];
        li.textContent = `after stroke ${i + 1}: ${top.name} (${pct(top.p)})` + (truth ? (top.name === truth ? " ✓" : "") : "");
      } else {
        clearGuesses();
        li.textContent = `after stroke ${i + 1}: a single tap, no guess yet`;
      }
      record.push(res ? res.classes : []);
      steps.appendChild(li);
      if (!truth && res) target = res.classes[0].name;
      drawCurve(record, target || "");
      await sleep(250);
    }
    status(truth ? `replayed a drawing of class ${truth}` : "replayed your drawing");
  } catch (err) {
    status(err.message, true);
  } finally {
    replaying = false;
  }
}

function drawCurve(record, target) {
  // probability of ``target`` after each stroke (0 when it is not among the top 5)
  const svg = $("curve");
  svg.replaceChildren();
  const n = record.length;
  const px = (i) => 24 + (n > 1 ? i / (n - 1) : 0.5) * 286;
  const py = (p) => 108 - p * 96;
  const ps = record.map((cls) => (cls.find((c) => c.name === target) || { p: 0 }).p);
  const mk = (tag, attrs, text) => {
    const el = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text) el.textContent = text;
    svg.appendChild(el);
  };
  mk("text", { x: 2, y: py(1) + 3 }, "1");
  mk("text", { x: 2, y: py(0) + 3 }, "0");
  mk("text", { x: 30, y: 10 }, `p(${target}) after each stroke`);
  mk("polyline", { points: ps.map((p, i) => `${px(i)},${py(p)}`).join(" ") });
  ps.forEach((p, i) => mk("circle", { cx: px(i), cy: py(p), r: 3 }));
}

function replayStored(drawing, title, truth) {
  const strokes = drawing.map(([x, y]) => ({ x, y }));
  sketch = { strokes, format: "simplified", view: fitView(strokes) };
  replay(strokes, "simplified", sketch.view, title, truth);
}

$("replay").addEventListener("click", () => {
  const strokes = sketch.strokes.filter((s) => s.x.length > 0);
  if (!strokes.length) { status("nothing to replay: draw something first"); return; }
  replay(strokes, sketch.format, sketch.view, sketch.format === "raw" ? "(your drawing)" : "", null);
});

$("replay-test").addEventListener("click", async () => {
  try {
    const s = await api("/api/sample?split=test");
    replayStored(s.drawing, `(a test drawing of class ${s.class})`, s.class);
  } catch (err) { status(err.message, true); }
});

$("undo").addEventListener("click", () => {
  if (replaying) return;
  sketch.strokes.pop();
  redraw();
  guessNow();
});

$("clear").addEventListener("click", () => {
  if (replaying) return;
  sketch = { strokes: [], format: "raw", view: IDENTITY };
  t0 = null;
  redraw();
  clearGuesses();
  $("evolution").hidden = true;
  status("Draw something (mouse, touch or pen). The model guesses after every stroke.");
});

// ---------------------------------------------------------------------------------- tabs
for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => {
    for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t === tab);
    for (const p of document.querySelectorAll(".panel")) p.classList.toggle("active", p.id === tab.dataset.tab);
  });
}

// ---------------------------------------------------------------------------------- human test
let human = null;

function showHumanItem() {
  const { items, classes, i } = human;
  $("human-progress").textContent = `${i + 1} / ${items.length}`;
  $("human-fraction").textContent = `${Math.round(items[i].fraction * 100)} %`;
  $("human-drawing").replaceChildren(sketchSvg(items[i].drawing));
  const box = $("human-classes");
  box.replaceChildren();
  for (const c of classes) {
    const b = document.createElement("button");
    b.textContent = c;
    b.addEventListener("click", () => answer(c));
    box.appendChild(b);
  }
}

async function answer(name) {
  human.answers.push(name);
  human.i += 1;
  if (human.i < human.items.length) { showHumanItem(); return; }
  try {
    const res = await api("/api/human/finish", { session: human.session, answers: human.answers });
    const body = $("human-rows");
    body.replaceChildren();
    for (const r of res.rows) {
      const tr = document.createElement("tr");
      const ci = ([lo, hi]) => `${Math.round(100 * lo)}–${Math.round(100 * hi)} %`;
      for (const v of [`${Math.round(r.fraction * 100)} %`, r.n, `${pct(r.human)} (${ci(r.human_ci95)})`,
                       `${pct(r.model)} (${ci(r.model_ci95)})`]) {
        const td = document.createElement("td"); td.textContent = v; tr.appendChild(td);
      }
      body.appendChild(tr);
    }
    if (!res.rows.length) body.innerHTML = "<tr><td colspan=4>no answers given</td></tr>";
    $("human-saved").textContent = res.saved;
    $("human-study").textContent = res.study_human;
    $("human-play").hidden = true;
    $("human-result").hidden = false;
  } catch (err) { alert(err.message); }
}

$("human-start").addEventListener("click", async () => {
  const fractions = [];
  if ($("human-f50").checked) fractions.push(0.5);
  if ($("human-f100").checked) fractions.push(1.0);
  if (!fractions.length) { alert("choose 50 % and/or 100 %"); return; }
  try {
    const res = await api("/api/human/start", { n: Number($("human-n").value) || 20, fractions });
    human = { ...res, i: 0, answers: [] };
    $("human-setup").hidden = true;
    $("human-result").hidden = true;
    $("human-play").hidden = false;
    showHumanItem();
  } catch (err) { alert(err.message); }
});
$("human-skip").addEventListener("click", () => answer(null));
$("human-again").addEventListener("click", () => {
  $("human-result").hidden = true;
  $("human-setup").hidden = false;
});

// ---------------------------------------------------------------------------------- start
api("/api/health").then((h) => {
  $("model-info").textContent = `${h.model_kind} model, ${h.classes.length} classes, index of ${h.index.n} drawings`;
}).catch((err) => status(err.message, true));
redraw();

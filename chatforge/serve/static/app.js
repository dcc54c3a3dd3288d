// chatforge web UI: plain JavaScript, no build step, talks to the OpenAI-compatible API of this server.
"use strict";
const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- API helpers
function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("apikey").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function api(path, body) {
  const r = await fetch(path, body === undefined ? { headers: headers() } :
    { method: "POST", headers: headers(), body: JSON.stringify(body) });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error((data.error && data.error.message) || ("HTTP " + r.status));
  return data;
}

// POST with stream: true; calls onChunk(obj) for every server-sent event until [DONE]; returns the headers.
async function stream(path, body, onChunk, signal) {
  const r = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body), signal });
  if (!r.ok) {
    const data = await r.json().catch(() => ({}));
    throw new Error((data.error && data.error.message) || ("HTTP " + r.status));
  }
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {           // one SSE event per blank-line-terminated block
      const event = buf.slice(0, i); buf = buf.slice(i + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const payload = line.slice(6);
        if (payload === "[DONE]") return r.headers;
        const obj = JSON.parse(payload);
        if (obj.error) throw new Error(obj.error.message);
        onChunk(obj);
      }
    }
  }
  return r.headers;
}

const num = (id) => { const v = $(id).value.trim(); return v === "" ? undefined : Number(v); };

// ---------------------------------------------------------------- tabs and model picker
document.querySelectorAll("#tabs button").forEach((b) => b.addEventListener("click", () => {
  document.querySelectorAll("#tabs button").forEach((x) => x.classList.toggle("active", x === b));
  document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t.id === "tab-" + b.dataset.tab));
  if (b.dataset.tab === "arena") loadLeaderboard();
  if (b.dataset.tab === "report") loadReport();
}));
const openTab = (name) => document.querySelector(`#tabs button[data-tab=${name}]`).click();

$("apikey").value = localStorage.getItem("chatforge-key") || "";
$("apikey").addEventListener("change", () => { localStorage.setItem("chatforge-key", $("apikey").value); loadModels(); });

// each tab has its own model picker: chat starts on the best assistant stage the server names
// (chat_default: RL only if it beat SFT in results.json), the playground on the base model
async function loadModels() {
  try {
    const data = await api("/v1/models");
    const ids = data.data.map((m) => m.id);
    const want = { chat: data.chat_default, base: ids.includes("base") ? "base" : null, any: data.chat_default };
    document.querySelectorAll(".model-pick").forEach((sel) => {
      const prev = sel.value;
      sel.innerHTML = "";
      for (const id of ids) { const o = document.createElement("option"); o.value = o.textContent = id; sel.appendChild(o); }
      sel.value = ids.includes(prev) ? prev : (want[sel.dataset.pick] || ids[0] || "");
    });
    showChatModel();
  } catch (e) { $("chat-status").textContent = "could not list models: " + e.message; }
}

function showChatModel() { $("chat-model-name").textContent = "model: " + $("chat-model").value; }
$("chat-model").addEventListener("change", showChatModel);
// on a phone the settings start folded so the conversation gets the screen
if (window.matchMedia("(max-width: 700px)").matches) $("settings").open = false;

// ---------------------------------------------------------------- chat
let history = [];          // [{role, content, div}]; content is a string or parts (text, tool_call, tool_output)
let controller = null;     // AbortController of the running stream

function addMessage(role, text) {
  const d = document.createElement("div");
  d.className = "msg " + role; d.textContent = text;
  $("messages").appendChild(d); $("messages").scrollTop = 1e9;
  return d;
}

// an assistant reply as it streams: text, and tool calls/outputs shown as readable blocks
function replyView(div) {
  const parts = [];
  let textNode = null;
  return {
    parts,
    text(t) {
      if (!t) return;
      if (!textNode) { textNode = document.createTextNode(""); div.appendChild(textNode); parts.push({ type: "text", text: "" }); }
      textNode.data += t; parts[parts.length - 1].text += t;
    },
    part(p) {
      parts.push(p); textNode = null;
      const b = document.createElement("div");
      b.className = "tool " + p.type;
      b.textContent = p.type === "tool_call" ? `${p.name}: ${p.input}` : `→ ${p.text}`;
      div.appendChild(b);
    },
  };
}

function markTrimmed(n) {
  // the server left out the n oldest messages (they no longer fit the model's context)
  history.forEach((m, i) => m.div.classList.toggle("out-of-context", i < n));
  return n ? ` · the ${n} oldest messages no longer fit the context and were left out` : "";
}

async function sendChat(ev) {
  ev.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || controller) return;
  $("prompt").value = "";
  history.push({ role: "user", content: text, div: addMessage("user", text) });
  const div = addMessage("assistant", "");
  const view = replyView(div);
  const messages = [];
  const sys = $("system").value.trim();
  if (sys) messages.push({ role: "system", content: sys });
  messages.push(...history.map((m) => ({ role: m.role, content: m.content })));
  const body = { model: $("chat-model").value, messages, stream: true, temperature: num("temperature"),
    top_p: num("top_p"), max_tokens: num("max_tokens"), seed: num("seed") };
  const k = num("top_k"); if (k) body.top_k = k;
  controller = new AbortController();
  $("send").disabled = true; $("stop").disabled = false; $("chat-status").textContent = "generating…";
  let finish = "", ok = true;
  try {
    const h = await stream("/v1/chat/completions", body, (c) => {
      const ch = c.choices[0];
      if (ch.delta && ch.delta.content) view.text(ch.delta.content);
      if (ch.delta && ch.delta.parts) ch.delta.parts.forEach((p) => view.part(p));
      $("messages").scrollTop = 1e9;
      if (ch.finish_reason) finish = ch.finish_reason;
    }, controller.signal);
    $("chat-status").textContent = "done (" + finish + ")" + markTrimmed(Number(h.get("x-chatforge-trimmed-messages") || 0));
  } catch (e) {
    if (e.name === "AbortError") $("chat-status").textContent = "stopped";
    else {   // a failed turn is shown but not kept: the next message must not fail because of it
      ok = false;
      const err = document.createElement("div"); err.className = "error"; err.textContent = "[error] " + e.message;
      div.classList.add("error"); div.appendChild(err);
      history.pop().div.classList.add("not-sent");
      $("chat-status").textContent = "not sent: " + e.message;
    }
  }
  if (ok) {
    const plain = view.parts.every((p) => p.type === "text");
    history.push({ role: "assistant", div,
      content: plain ? view.parts.map((p) => p.text).join("") : view.parts });
  }
  controller = null; $("send").disabled = false; $("stop").disabled = true;
}

$("chat-form").addEventListener("submit", sendChat);
$("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) sendChat(e); });
$("stop").addEventListener("click", () => controller && controller.abort());
$("clear").addEventListener("click", () => { history = []; $("messages").innerHTML = ""; $("chat-status").textContent = ""; });

// ---------------------------------------------------------------- playground (base model, top candidates)
function showCandidates(span, info) {
  document.querySelectorAll("#pg-out .selected").forEach((x) => x.classList.remove("selected"));
  span.classList.add("selected");
  // top_candidates (id, token, logprob) keeps candidates apart that print alike; fall back to the dict
  const cands = info.cands || Object.entries(info.top || {}).map(([token, logprob]) => ({ token, logprob }));
  const rows = cands.sort((a, b) => b.logprob - a.logprob).map((c) => {
    const p = Math.exp(c.logprob);
    return `<tr><td><code>${escapeHtml(JSON.stringify(c.display || c.token).replace(/\\\\x/g, "\\x"))}</code>${c.id === undefined ? "" : " <small>id " + c.id + "</small>"}</td>` +
      `<td>${(100 * p).toFixed(2)}%</td>` +
      `<td><span class="bar" style="width:${Math.round(200 * p)}px"></span></td></tr>`;
  }).join("");
  $("pg-detail").innerHTML = `chosen <code>${escapeHtml(JSON.stringify(info.token).replace(/\\\\x/g, "\\x"))}</code> p=${(100 * Math.exp(info.logprob)).toFixed(2)}%` +
    `<table class="cands"><tr><th>candidate</th><th>p</th><th></th></tr>${rows}</table>`;
}

$("pg-go").addEventListener("click", async () => {
  const out = $("pg-out"); out.innerHTML = ""; $("pg-detail").textContent = "";
  const prompt = $("pg-prompt").value;
  const ps = document.createElement("span"); ps.className = "tok prompt"; ps.textContent = prompt; out.appendChild(ps);
  let n = 0;
  try {
    await stream("/v1/completions", { model: $("pg-model").value, prompt, stream: true, max_tokens: num("pg-max"),
      temperature: num("pg-temp"), logprobs: num("pg-top") }, (c) => {
      const ch = c.choices[0], lp = ch.logprobs;
      if (!lp) { if (ch.text) out.appendChild(document.createTextNode(ch.text)); return; }
      lp.tokens.forEach((tok, i) => {
        const s = document.createElement("span");
        s.className = "tok t" + (n++ % 6); s.textContent = (lp.displays || lp.tokens)[i];
        const info = { token: (lp.displays || lp.tokens)[i], logprob: lp.token_logprobs[i], top: (lp.top_logprobs || [])[i],
          cands: (lp.top_candidates || [])[i] };
        s.title = "p=" + (100 * Math.exp(info.logprob)).toFixed(1) + "%";
        s.addEventListener("click", () => showCandidates(s, info));
        out.appendChild(s);
      });
    });
  } catch (e) { $("pg-detail").innerHTML = `<span class="error">${escapeHtml(e.message)}</span>`; }
});

// ---------------------------------------------------------------- tokenizer
// byte-level BPE splits a character's UTF-8 bytes across tokens: such tokens show their bytes (\xNN,
// from the server's "display") and, on hover, the character their group of tokens forms
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });
function utf8Groups(tokens) {
  const groups = [];    // [start, end) index ranges whose bytes decode together
  let i = 0;
  while (i < tokens.length) {
    let j = i, bytes = [], text = null;
    while (j < tokens.length && j - i < 8) {
      bytes = bytes.concat(tokens[j].bytes); j++;
      try { text = strictUtf8.decode(new Uint8Array(bytes)); break; } catch (e) { text = null; }
    }
    if (text === null) j = i + 1;
    groups.push({ start: i, end: j, text });
    i = j;
  }
  return groups;
}

$("tok-go").addEventListener("click", async () => {
  try {
    const text = $("tok-text").value;
    const data = await api("/v1/tokenize", { model: $("tok-model").value, text });
    const out = $("tok-out"); out.innerHTML = "";
    for (const g of utf8Groups(data.tokens)) {
      for (let i = g.start; i < g.end; i++) {
        const t = data.tokens[i], s = document.createElement("span");
        const partial = g.end - g.start > 1 || g.text === null;
        s.className = "tok t" + (i % 6) + (partial ? " partial" : "");
        s.textContent = t.display;
        s.title = "id " + t.id + (partial ? ` · bytes ${t.bytes.map((b) => b.toString(16).toUpperCase().padStart(2, "0")).join(" ")}` +
          (g.text !== null ? ` · part of "${g.text}"` : "") : "");
        out.appendChild(s);
      }
    }
    $("tok-ids").textContent = "[" + data.tokens.map((t) => t.id).join(", ") + "]";
    $("tok-count").textContent = `${data.count} tokens, ${text.length} characters` +
      (data.count ? `, ${(text.length / data.count).toFixed(2)} chars/token` : "");
  } catch (e) { $("tok-count").textContent = "error: " + e.message; }
});

// ---------------------------------------------------------------- arena
let battle = null;

async function loadLeaderboard() {
  try {
    const data = await api("/v1/arena/leaderboard");
    $("leaderboard").querySelector("tbody").innerHTML = data.leaderboard.map((r, i) =>
      `<tr><td>${i + 1}</td><td>${escapeHtml(r.model)}</td><td>${r.rating}</td><td>[${r.lo}, ${r.hi}]</td><td>${r.elo}</td><td>${r.votes}</td>` +
      `<td>${r.wins}</td><td>${r.losses}</td><td>${r.ties}</td></tr>`).join("");
    $("leaderboard-judges").textContent = Object.entries(data.by_judge || {}).map(([j, n]) => `${n} ${j}`).join(", ");
  } catch (e) { $("arena-status").textContent = "leaderboard: " + e.message; }
}

function setVoting(on) { document.querySelectorAll(".vote").forEach((b) => { b.disabled = !on; }); }

$("arena-go").addEventListener("click", async () => {
  const prompt = $("arena-prompt").value.trim();
  if (!prompt) return;
  setVoting(false); battle = null;
  $("arena-a").textContent = $("arena-b").textContent = "";
  $("arena-a-name").textContent = "Model A"; $("arena-b-name").textContent = "Model B";
  $("arena-status").textContent = "both models are answering…";
  try {
    const data = await api("/v1/arena/battle", { prompt, max_tokens: num("max_tokens"), temperature: num("temperature") });
    battle = data.battle_id;
    $("arena-a").textContent = data.answer_a; $("arena-b").textContent = data.answer_b;
    $("arena-status").textContent = "which answer is better?";
    setVoting(true);
  } catch (e) { $("arena-status").textContent = "error: " + e.message; }
});

document.querySelectorAll(".vote").forEach((b) => b.addEventListener("click", async () => {
  if (!battle) return;
  setVoting(false);
  try {
    const data = await api("/v1/arena/vote", { battle_id: battle, winner: b.dataset.winner });
    $("arena-a-name").textContent = "Model A: " + data.model_a; $("arena-b-name").textContent = "Model B: " + data.model_b;
    $("arena-status").textContent = "vote recorded";
    battle = null;
    loadLeaderboard();
  } catch (e) { $("arena-status").textContent = "error: " + e.message; }
}));

// ---------------------------------------------------------------- internals (logit lens, attention, residual stream)
let internalsData = null;

const shownToken = (t) => JSON.stringify(t).slice(1, -1).replace(/ /g, "\u2423");   // newlines and spaces (␣) visible
function bar(frac, color) { return `<span class="bar" style="width:${Math.round(160 * Math.min(1, frac))}px${color ? ";background:" + color : ""}"></span>`; }

$("in-go").addEventListener("click", async () => {
  $("in-status").textContent = "computing…";
  try {
    const d = await api("/v1/internals", { model: $("in-model").value, text: $("in-text").value,
      chat: $("in-chat").checked, answer: $("in-answer").value });
    internalsData = d;
    renderInternals(d);
    $("in-out").hidden = false;
    $("in-status").textContent = `${d.tokens.length} tokens, ${d.config.n_layer} layers × ${d.config.n_head} heads; ` +
      `lens vs logits max |diff| ${d.lens_vs_logits_max_abs_diff.toExponential(1)}`;
  } catch (e) { $("in-status").textContent = "error: " + e.message; }
});

function renderInternals(d) {
  $("in-shapes").innerHTML = "<tr><th>tensor</th><th>shape</th><th>what</th></tr>" + d.shapes.map((s) =>
    `<tr><td><code>${escapeHtml(s.name)}</code></td><td><code>(${s.shape.join(", ")})</code></td><td>${escapeHtml(s.note)}</td></tr>`).join("");
  // lens: rows = layers (top = last), columns = positions; cell = top-1 guess shaded by its probability
  const head = "<tr><th>layer \\ position</th>" + d.tokens.map((t, i) =>
    `<th title="id ${t.id}">${i}<br><code>${escapeHtml(shownToken(t.text))}</code></th>`).join("") + "</tr>";
  const rows = d.lens.slice().reverse().map((row) => `<tr><th>${escapeHtml(row.name)}</th>` + row.top.map((c, t) =>
    `<td class="lcell" data-layer="${row.layer}" data-pos="${t}" style="background:rgba(45,108,223,${(0.85 * c[0].p).toFixed(2)})">` +
    `<code>${escapeHtml(shownToken(c[0].text))}</code><br><small>${c[0].p.toFixed(2)}</small></td>`).join("") + "</tr>").join("");
  $("in-lens").innerHTML = head + rows;
  $("in-lens").querySelectorAll(".lcell").forEach((td) => td.addEventListener("click", () => {
    const row = d.lens[+td.dataset.layer], cands = row.top[+td.dataset.pos];
    $("in-lens-detail").innerHTML = `${escapeHtml(row.name)}, position ${td.dataset.pos}: <table class="cands">` +
      cands.map((c) => `<tr><td><code>${escapeHtml(shownToken(c.text))}</code> <small>id ${c.id}</small></td>` +
        `<td>${(100 * c.p).toFixed(1)}%</td><td>${bar(c.p)}</td></tr>`).join("") + "</table>";
  }));
  $("in-answer-title").textContent = `Probability of the answer "${shownToken(d.answer.text)}" at the last position, per layer`;
  $("in-answer-p").innerHTML = d.lens.map((row, l) =>
    `<tr><th>${escapeHtml(row.name)}</th><td>${(100 * d.answer.p[l]).toFixed(1)}%</td><td>${bar(d.answer.p[l])}</td></tr>`).join("");
  const maxNorm = Math.max(...d.residual.map((r) => r.norm), 1e-9);
  $("in-norms").innerHTML = "<tr><th>layer</th><th>mean ‖x‖</th><th></th><th>+ attention</th><th>+ MLP</th></tr>" +
    d.residual.map((r) => {
      const c = d.contrib.find((x) => x.layer === r.layer);
      return `<tr><th>${escapeHtml(r.name)}</th><td>${r.norm.toFixed(2)}</td><td>${bar(r.norm / maxNorm)}</td>` +
        `<td>${c ? c.attn.toFixed(2) + " " + bar(c.attn / maxNorm, "#e07a1f") : ""}</td>` +
        `<td>${c ? c.mlp.toFixed(2) + " " + bar(c.mlp / maxNorm, "#2e9e5b") : ""}</td></tr>`;
    }).join("");
  const opts = (n) => Array.from({ length: n }, (_, i) => `<option value="${i}">${i + 1}</option>`).join("");
  $("in-layer").innerHTML = opts(d.config.n_layer); $("in-head").innerHTML = opts(d.config.n_head);
  drawAttention();
}

// one (T, T) map on a canvas, token labels on both axes (rows: queries, columns: keys)
function drawAttention() {
  const d = internalsData; if (!d) return;
  const rows = d.attention_permille[+$("in-layer").value][+$("in-head").value];   // weights in thousandths
  const labels = d.tokens.map((t) => shownToken(t.text).slice(0, 12));
  const T = labels.length, cv = $("in-att"), ctx = cv.getContext("2d");
  ctx.font = "11px monospace";
  const pad = Math.ceil(Math.max(...labels.map((s) => ctx.measureText(s).width))) + 8;
  const cell = Math.max(6, Math.min(28, Math.floor(Math.min(720, (cv.parentElement.clientWidth || 720) - pad) / T)));
  cv.width = pad + T * cell; cv.height = pad + T * cell;
  ctx.font = "11px monospace"; ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, cv.width, cv.height);
  for (let i = 0; i < T; i++) for (let j = 0; j <= i; j++) {
    const w = rows[i][j] / 1000;
    ctx.fillStyle = `rgba(45,108,223,${Math.sqrt(w).toFixed(3)})`;          // sqrt: small weights stay visible
    ctx.fillRect(pad + j * cell, pad + i * cell, cell - 1, cell - 1);
  }
  ctx.fillStyle = "#1d1d1f"; ctx.textBaseline = "middle";
  labels.forEach((s, i) => {
    ctx.textAlign = "right"; ctx.fillText(s, pad - 4, pad + i * cell + cell / 2);          // queries, left
    ctx.save(); ctx.translate(pad + i * cell + cell / 2, pad - 4); ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "left"; ctx.fillText(s, 0, 0); ctx.restore();                          // keys, top
  });
}
$("in-layer").addEventListener("change", drawAttention);
$("in-head").addEventListener("change", drawAttention);

// ---------------------------------------------------------------- report card
async function loadReport() {
  $("report-status").textContent = "loading…";
  try {
    const d = await api("/v1/report");
    $("report").innerHTML = d.html;        // rendered server-side from report.md, text escaped there
    $("report-status").textContent = d.path ? "from " + d.path : "";
  } catch (e) { $("report-status").textContent = "error: " + e.message; }
}

function escapeHtml(s) { return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c])); }

loadModels();
if (location.pathname === "/report") openTab("report");

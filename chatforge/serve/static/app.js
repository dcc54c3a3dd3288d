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

// POST with stream: true; calls onChunk(obj) for every server-sent event until [DONE].
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
        if (payload === "[DONE]") return;
        const obj = JSON.parse(payload);
        if (obj.error) throw new Error(obj.error.message);
        onChunk(obj);
      }
    }
  }
}

const num = (id) => { const v = $(id).value.trim(); return v === "" ? undefined : Number(v); };

// ---------------------------------------------------------------- tabs and model picker
document.querySelectorAll("#tabs button").forEach((b) => b.addEventListener("click", () => {
  document.querySelectorAll("#tabs button").forEach((x) => x.classList.toggle("active", x === b));
  document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t.id === "tab-" + b.dataset.tab));
  if (b.dataset.tab === "arena") loadLeaderboard();
}));

$("apikey").value = localStorage.getItem("chatforge-key") || "";
$("apikey").addEventListener("change", () => { localStorage.setItem("chatforge-key", $("apikey").value); loadModels(); });

async function loadModels() {
  try {
    const data = await api("/v1/models");
    const sel = $("model"), prev = sel.value;
    sel.innerHTML = "";
    for (const m of data.data) {
      const o = document.createElement("option"); o.value = o.textContent = m.id; sel.appendChild(o);
    }
    // chat defaults to the most finished stage: rl, then sft, then whatever comes first
    const ids = data.data.map((m) => m.id);
    sel.value = ids.includes(prev) ? prev : (["rl", "sft"].find((x) => ids.includes(x)) || ids[0] || "");
  } catch (e) { $("chat-status").textContent = "could not list models: " + e.message; }
}

// ---------------------------------------------------------------- chat
let history = [];          // [{role, content}]
let controller = null;     // AbortController of the running stream

function addMessage(role, text) {
  const d = document.createElement("div");
  d.className = "msg " + role; d.textContent = text;
  $("messages").appendChild(d); $("messages").scrollTop = 1e9;
  return d;
}

async function sendChat(ev) {
  ev.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || controller) return;
  $("prompt").value = "";
  history.push({ role: "user", content: text });
  addMessage("user", text);
  const div = addMessage("assistant", "");
  const messages = [];
  const sys = $("system").value.trim();
  if (sys) messages.push({ role: "system", content: sys });
  messages.push(...history);
  const body = { model: $("model").value, messages, stream: true, temperature: num("temperature"),
    top_p: num("top_p"), max_tokens: num("max_tokens"), seed: num("seed") };
  const k = num("top_k"); if (k) body.top_k = k;
  controller = new AbortController();
  $("send").disabled = true; $("stop").disabled = false; $("chat-status").textContent = "generating…";
  let answer = "", finish = "";
  try {
    await stream("/v1/chat/completions", body, (c) => {
      const ch = c.choices[0];
      if (ch.delta && ch.delta.content) { answer += ch.delta.content; div.textContent = answer; $("messages").scrollTop = 1e9; }
      if (ch.finish_reason) finish = ch.finish_reason;
    }, controller.signal);
    $("chat-status").textContent = "done (" + finish + ")";
  } catch (e) {
    if (e.name === "AbortError") $("chat-status").textContent = "stopped";
    else { div.classList.add("error"); div.textContent = answer + "\n[error] " + e.message; $("chat-status").textContent = ""; }
  }
  history.push({ role: "assistant", content: answer });
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
    return `<tr><td><code>${escapeHtml(JSON.stringify(c.token))}</code>${c.id === undefined ? "" : " <small>id " + c.id + "</small>"}</td>` +
      `<td>${(100 * p).toFixed(2)}%</td>` +
      `<td><span class="bar" style="width:${Math.round(200 * p)}px"></span></td></tr>`;
  }).join("");
  $("pg-detail").innerHTML = `chosen <code>${escapeHtml(JSON.stringify(info.token))}</code> p=${(100 * Math.exp(info.logprob)).toFixed(2)}%` +
    `<table class="cands"><tr><th>candidate</th><th>p</th><th></th></tr>${rows}</table>`;
}

$("pg-go").addEventListener("click", async () => {
  const out = $("pg-out"); out.innerHTML = ""; $("pg-detail").textContent = "";
  const prompt = $("pg-prompt").value;
  const ps = document.createElement("span"); ps.className = "tok prompt"; ps.textContent = prompt; out.appendChild(ps);
  let n = 0;
  try {
    await stream("/v1/completions", { model: $("model").value, prompt, stream: true, max_tokens: num("pg-max"),
      temperature: num("pg-temp"), logprobs: num("pg-top") }, (c) => {
      const ch = c.choices[0], lp = ch.logprobs;
      if (!lp) { if (ch.text) out.appendChild(document.createTextNode(ch.text)); return; }
      lp.tokens.forEach((tok, i) => {
        const s = document.createElement("span");
        s.className = "tok t" + (n++ % 6); s.textContent = tok;
        const info = { token: tok, logprob: lp.token_logprobs[i], top: (lp.top_logprobs || [])[i],
          cands: (lp.top_candidates || [])[i] };
        s.title = "p=" + (100 * Math.exp(info.logprob)).toFixed(1) + "%";
        s.addEventListener("click", () => showCandidates(s, info));
        out.appendChild(s);
      });
    });
  } catch (e) { $("pg-detail").innerHTML = `<span class="error">${escapeHtml(e.message)}</span>`; }
});

// ---------------------------------------------------------------- tokenizer
$("tok-go").addEventListener("click", async () => {
  try {
    const text = $("tok-text").value;
    const data = await api("/v1/tokenize", { model: $("model").value, text });
    const out = $("tok-out"); out.innerHTML = "";
    data.tokens.forEach((t, i) => {
      const s = document.createElement("span");
      s.className = "tok t" + (i % 6); s.textContent = t.text; s.title = "id " + t.id;
      out.appendChild(s);
    });
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
      `<tr><td>${i + 1}</td><td>${escapeHtml(r.model)}</td><td>${r.rating}</td><td>${r.elo}</td><td>${r.votes}</td>` +
      `<td>${r.wins}</td><td>${r.losses}</td><td>${r.ties}</td></tr>`).join("");
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

function escapeHtml(s) { return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c])); }

loadModels();

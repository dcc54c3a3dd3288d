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
}));

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

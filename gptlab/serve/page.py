"""The chat page served at ``GET /``: one self-contained HTML file (inline CSS and JavaScript, no build step).

It talks to ``/v1/chat/completions`` on the same server with ``stream: true``, reads the server-sent
events with ``fetch`` and a stream reader, and appends each piece of text as it arrives. The stop
button aborts the fetch, which closes the connection; the server notices and frees the slot.
"""

from __future__ import annotations

import html

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>gptlab chat: __MODEL__</title>
<style>
  :root { --bg: #f6f7f9; --fg: #1d2330; --muted: #6b7280; --user: #dbeafe; --bot: #ffffff; --accent: #2563eb; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.5 system-ui, sans-serif; background: var(--bg); color: var(--fg);
         display: flex; flex-direction: column; height: 100vh; }
  header { padding: 10px 16px; border-bottom: 1px solid #e5e7eb; display: flex; gap: 16px; align-items: center;
           flex-wrap: wrap; background: #fff; }
  header h1 { font-size: 16px; margin: 0 8px 0 0; }
  header label { color: var(--muted); font-size: 13px; display: flex; gap: 6px; align-items: center; }
  header input { width: 80px; padding: 3px 6px; }
  header input#api-key { width: 140px; }
  #log { flex: 1; overflow-y: auto; padding: 16px; display: flex; flex-direction: column; gap: 10px; }
  .msg { max-width: 80%; padding: 8px 12px; border-radius: 10px; white-space: pre-wrap; word-wrap: break-word;
         box-shadow: 0 1px 2px rgba(0,0,0,.06); }
  .user { align-self: flex-end; background: var(--user); }
  .assistant { align-self: flex-start; background: var(--bot); }
  .error { align-self: center; color: #b91c1c; font-size: 13px; }
  .assistant.streaming::after { content: "\\25CF"; color: var(--accent); margin-left: 4px; }
  form { display: flex; gap: 8px; padding: 12px 16px; border-top: 1px solid #e5e7eb; background: #fff; }
  textarea { flex: 1; resize: none; height: 56px; padding: 8px; font: inherit; border-radius: 8px;
             border: 1px solid #d1d5db; }
  button { padding: 0 16px; border-radius: 8px; border: 1px solid var(--accent); background: var(--accent);
           color: #fff; font: inherit; cursor: pointer; }
  button.secondary { background: #fff; color: var(--accent); }
  button:disabled { opacity: .45; cursor: default; }
</style>
</head>
<body>
<header>
  <h1>gptlab chat &middot; <span id="model">__MODEL__</span></h1>
  <label>temperature <input id="temperature" type="number" min="0" max="2" step="0.1" value="0.7"></label>
  <label>max tokens <input id="max-tokens" type="number" min="1" max="__MAX_ANSWER__" step="1" value="__DEFAULT_ANSWER__"></label>
  <label>API key <input id="api-key" type="password" placeholder="(none)" autocomplete="off"></label>
  <button id="reset" class="secondary" type="button">New chat</button>
</header>
<main id="log" aria-live="polite"></main>
<form id="form">
  <textarea id="input" placeholder="Type a message; Enter sends, Shift+Enter adds a line" autofocus></textarea>
  <button id="send" type="submit">Send</button>
  <button id="stop" type="button" class="secondary" disabled>Stop</button>
</form>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const log = $("log"), input = $("input"), sendBtn = $("send"), stopBtn = $("stop");
let conversation = [];          // [{role, content}] sent with every request
let controller = null;     // AbortController of the answer being streamed

$("api-key").value = localStorage.getItem("gptlab-api-key") || "";
$("api-key").addEventListener("change", () => localStorage.setItem("gptlab-api-key", $("api-key").value));

function bubble(cls, text) {
  const div = document.createElement("div");
  div.className = "msg " + cls;
  div.textContent = text;
  log.appendChild(div);
  log.scrollTop = log.scrollHeight;
  return div;
}

function busy(on) {
  sendBtn.disabled = on;
  stopBtn.disabled = !on;
}

async function send(text) {
  conversation.push({ role: "user", content: text });
  bubble("user", text);
  const out = bubble("assistant streaming", "");
  controller = new AbortController();
  busy(true);
  let answer = "";
  try {
    const headers = { "Content-Type": "application/json" };
    const key = $("api-key").value.trim();
    if (key) headers["Authorization"] = "Bearer " + key;
    let res;
    for (;;) {
      res = await fetch("/v1/chat/completions", {
        method: "POST", headers, signal: controller.signal,
        body: JSON.stringify({
          model: $("model").textContent, messages: conversation, stream: true,
          temperature: Number($("temperature").value), max_tokens: Math.max(1, Math.min(Number($("max-tokens").value), __MAX_ANSWER__)),
        }),
      });
      if (res.ok) break;
      let err = { message: res.status + " " + res.statusText };
      try { err = (await res.json()).error; } catch (e) {}
      // Keep the conversation within the context window: forget the oldest exchange and try again.
      const firstUser = conversation.findIndex((m) => m.role === "user");
      if (err.code === "context_length_exceeded" && firstUser >= 0 && firstUser < conversation.length - 1) {
        conversation.splice(firstUser, conversation[firstUser + 1].role === "assistant" ? 2 : 1);
        continue;
      }
      throw new Error(err.message);
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\\n\\n")) >= 0) {
        const line = buf.slice(0, cut).trim();
        buf = buf.slice(cut + 2);
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        const delta = chunk.choices.length ? chunk.choices[0].delta : {};
        if (delta.content) {
          answer += delta.content;
          out.textContent = answer;
          log.scrollTop = log.scrollHeight;
        }
      }
    }
  } catch (err) {
    if (err.name !== "AbortError") {
      bubble("error", "error: " + err.message);
      if (!answer) { conversation.pop(); out.remove(); }
    }
  } finally {
    out.classList.remove("streaming");
    if (answer) conversation.push({ role: "assistant", content: answer });
    else if (conversation.length && conversation[conversation.length - 1].role === "user") conversation.pop();
    controller = null;
    busy(false);
    input.focus();
  }
}

$("form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = input.value.trim();
  if (!text || controller) return;
  input.value = "";
  send(text);
});
input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("form").requestSubmit(); }
});
stopBtn.addEventListener("click", () => { if (controller) controller.abort(); });
$("reset").addEventListener("click", () => {
  if (controller) controller.abort();
  conversation = [];
  log.replaceChildren();
});
</script>
</body>
</html>
"""


def chat_page(model_name: str, context_length: int = 1024) -> str:
    """The page's HTML, with the served model's name and answer lengths that fit its context filled in.

    An answer may take at most ``context_length - 1`` tokens (the prompt needs one); the default is
    128 tokens, or half the context when that is shorter, so a short-context model leaves room for
    the conversation.
    """
    longest = max(1, context_length - 1)
    default = max(1, min(128, context_length // 2))
    return (_PAGE.replace("__MODEL__", html.escape(model_name)).replace("__MAX_ANSWER__", str(longest))
            .replace("__DEFAULT_ANSWER__", str(default)))

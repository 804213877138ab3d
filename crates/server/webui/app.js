// The chat page: a conversation streamed from /v1/chat/completions (the public API only), with
// the text that accepted drafts wrote marked (the stream's `draft` field: `module` or `lookup`)
// and, per answer, tokens per full forward (the stream's `recycle` counters) and tokens/s.
"use strict";

const $ = (id) => document.getElementById(id);
// {role, content} of the turns so far; "New conversation" starts a new array, so an answer
// still streaming into the old one cannot land in the new.
let conversation = [];
let running = null; // the AbortController of the answer being streamed

// The page's own origin: a URL with credentials in it (user:key@host) cannot be fetched.
const api = (path) => new URL(path, window.location.origin).toString();

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

function bubble(role) {
  const div = document.createElement("div");
  div.className = `message ${role}`;
  const text = document.createElement("div");
  text.className = "text";
  div.append(text);
  $("messages").append(div);
  return { div, text };
}

// Appends `text` to `parent`, marked when drafts wrote it (adjacent pieces of one kind merge).
function appendText(parent, text, draft) {
  if (!text) return;
  const last = parent.lastChild;
  const kind = draft || "";
  if (last && last.nodeType === Node.ELEMENT_NODE && last.dataset.draft === kind) {
    last.textContent += text;
    return;
  }
  // Line breaks stay unmarked, so a mark never paints an empty line.
  if (draft && text.includes("\n")) {
    for (const piece of text.split(/(\n+)/)) appendText(parent, piece, piece.startsWith("\n") ? null : draft);
    return;
  }
  const node = document.createElement(draft ? "mark" : "span");
  node.dataset.draft = kind;
  if (draft) {
    node.className = draft;
    node.title = draft === "module" ? "drafted by the recyclable module" : "drafted by prompt lookup";
  }
  node.textContent = text;
  parent.append(node);
}

// The `data:` events of an SSE byte stream, as parsed JSON (or the string `[DONE]`).
async function* sseEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        yield data === "[DONE]" ? data : JSON.parse(data);
      }
    }
  }
}

function stats(answer, usage, recycle, seconds) {
  const parts = [];
  if (usage) parts.push(`${usage.completion_tokens} tokens`);
  if (usage && seconds > 0) parts.push(`${(usage.completion_tokens / seconds).toFixed(1)} tok/s`);
  if (recycle) {
    parts.push(`${recycle.tokens_per_full_forward.toFixed(2)} tokens per full forward`);
    parts.push(`${recycle.accepted} drafted tokens accepted (${recycle.accepted_from_text} by lookup), mode ${recycle.mode}`);
  }
  const line = document.createElement("div");
  line.className = "stats";
  line.textContent = parts.join(" · ");
  answer.div.append(line);
}

async function send(content) {
  const turns = conversation;
  turns.push({ role: "user", content });
  bubble("user").text.textContent = content;
  const answer = bubble("assistant");
  let reasoning = null;
  const system = $("system").value.trim();
  const messages = system ? [{ role: "system", content: system }, ...turns] : [...turns];
  const body = {
    messages,
    stream: true,
    stream_options: { include_usage: true },
    temperature: Number($("temperature").value),
    max_tokens: Number($("max-tokens").value),
    recycle: $("mode").value,
  };
  running = new AbortController();
  setBusy(true);
  const started = performance.now();
  let first = null;
  let text = "";
  let usage = null;
  let recycle = null;
  try {
    const response = await fetch(api("/v1/chat/completions"), {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: running.signal,
    });
    if (!response.ok) {
      const error = await response.json().catch(() => ({}));
      throw new Error(error?.error?.message || `HTTP ${response.status}`);
    }
    for await (const event of sseEvents(response.body)) {
      if (event === "[DONE]") break;
      if (event.error) throw new Error(event.error.message);
      if (event.usage) usage = event.usage;
      if (event.recycle) recycle = event.recycle;
      const choice = event.choices?.[0];
      if (!choice) continue;
      const delta = choice.delta || {};
      // tok/s counts from the first token of either kind: usage counts the reasoning too.
      if (delta.reasoning_content || delta.content) first ??= performance.now();
      if (delta.reasoning_content) {
        if (!reasoning) {
          const details = document.createElement("details");
          details.innerHTML = "<summary>reasoning</summary>";
          reasoning = document.createElement("div");
          details.append(reasoning);
          answer.div.prepend(details);
        }
        appendText(reasoning, delta.reasoning_content, choice.draft);
      }
      if (delta.content) {
        text += delta.content;
        appendText(answer.text, delta.content, choice.draft);
        $("messages").scrollTop = $("messages").scrollHeight;
      }
    }
    turns.push({ role: "assistant", content: text });
    stats(answer, usage, recycle, ((performance.now() - (first ?? started)) / 1000));
  } catch (error) {
    if (error.name === "AbortError") {
      turns.push({ role: "assistant", content: text });
      stats(answer, null, null, 0);
      answer.div.lastChild.textContent = "stopped";
    } else {
      // The turn got no answer: it leaves the conversation (two user turns in a row would be
      // refused by templates that check the turns alternate).
      turns.pop();
      answer.div.classList.add("error");
      appendText(answer.text, `\n${error.message}`, null);
    }
  } finally {
    running = null;
    setBusy(false);
  }
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

async function loadModel() {
  try {
    const response = await fetch(api("/v1/models"), { headers: headers() });
    const models = await response.json();
    $("model").textContent = response.ok ? models.data.map((m) => m.id).join(", ") : models.error.message;
  } catch (error) {
    $("model").textContent = `cannot reach the server: ${error.message}`;
  }
}

function init() {
  // The key is kept for this page only: a stale one saved for later would override the Basic
  // credentials the browser sends.
  $("api-key").addEventListener("change", loadModel);
  $("temperature").addEventListener("input", () => { $("temperature-value").value = $("temperature").value; });
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const content = $("input").value.trim();
    if (!content || running) return;
    $("input").value = "";
    send(content);
  });
  $("input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => running?.abort());
  $("clear").addEventListener("click", () => {
    running?.abort();
    conversation = [];
    $("messages").replaceChildren();
  });
  loadModel();
}

init();

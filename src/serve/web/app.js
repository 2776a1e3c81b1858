// The iadgpt web page: upload → POST /v1/detect → overlay, score, answer → POST /v1/chat turns
// (streamed: the answer shows as it is generated).
'use strict';
const $ = (id) => document.getElementById(id);
let image = null;      // the File to inspect
let sessionId = null;  // the conversation about the last result

function setStatus(text, isError = false) {
  $('status').textContent = text;
  $('status').classList.toggle('error', isError);
}

// With `serve --api-key-file` the API answers 401 until the page sends a key: it is asked for
// once and kept for this tab only (sessionStorage), sent as `Authorization: Bearer <key>`.
async function send(path, options = {}, retried = false) {
  const key = sessionStorage.getItem('iadgpt-api-key');
  const headers = Object.assign({}, options.headers || {}, key ? { Authorization: `Bearer ${key}` } : {});
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401 && !retried) {
    const entered = window.prompt('This server needs an API key:');
    if (entered) {
      sessionStorage.setItem('iadgpt-api-key', entered.trim());
      return send(path, options, true);
    }
  }
  if (!response.ok) {
    let body = null;
    try { body = await response.json(); } catch (e) { /* not JSON */ }
    throw new Error(body && body.error ? body.error.message : `HTTP ${response.status}`);
  }
  return response;
}

async function api(path, options = {}) {
  return (await send(path, options)).json();
}

// POST with "stream": true: the server-sent events' JSON payloads, each handed to onEvent as it
// arrives, until "data: [DONE]". Comment lines (": waiting") are skipped.
async function streamApi(path, body, onEvent) {
  const response = await send(path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(Object.assign({}, body, { stream: true })),
  });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffered = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffered += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffered.indexOf('\n\n')) >= 0) {
      const event = buffered.slice(0, end);
      buffered = buffered.slice(end + 2);
      if (!event.startsWith('data: ')) continue;
      const data = event.slice(6);
      if (data === '[DONE]') return;
      const parsed = JSON.parse(data);
      if (parsed.error) throw new Error(parsed.error.message);
      onEvent(parsed);
    }
  }
}

function choose(file) {
  if (!file) return;
  if (!file.type.startsWith('image/') && !/\.(png|jpe?g|bmp|tiff?)$/i.test(file.name)) {
    setStatus(`${file.name} is not an image`, true);
    return;
  }
  image = file;
  const preview = $('preview');
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $('drop-hint').hidden = true;
  $('inspect').disabled = false;
  setStatus(`${file.name} ready`);
}

function addTurn(role, text) {
  const li = document.createElement('li');
  li.className = role;
  li.textContent = text;
  $('chat-log').appendChild(li);
  return li;
}

async function inspect() {
  if (!image) return;
  const form = new FormData();
  form.append('image', image, image.name);
  form.append('class', $('class').value.trim() || 'object');
  for (const ref of $('refs').files) form.append('reference', ref, ref.name);
  $('inspect').disabled = true;
  setStatus('Inspecting…');
  try {
    const r = await api('/v1/detect', { method: 'POST', body: form });
    sessionId = r.session_id;
    $('overlay').src = 'data:image/png;base64,' + r.overlay_png;
    $('score').textContent = r.pred_score.toFixed(3);
    $('score-bar').value = r.pred_score;
    $('label').textContent = r.pred_label ? 'Anomalous' : 'Normal';
    $('label').className = r.pred_label ? 'anomalous' : 'normal';
    $('position').textContent = r.position || '—';
    $('time').textContent = `${(r.timings.total * 1000).toFixed(0)} ms`;
    $('chat-log').replaceChildren();
    addTurn('assistant', r.answer);
    $('result').hidden = false;
    setStatus(`Done (${r.references} reference image${r.references === 1 ? '' : 's'})`);
  } catch (e) {
    setStatus(e.message, true);
  } finally {
    $('inspect').disabled = false;
  }
}

async function ask(event) {
  event.preventDefault();
  const message = $('chat-input').value.trim();
  if (!message || !sessionId) return;
  $('chat-input').value = '';
  addTurn('user', message);
  const pending = addTurn('assistant', '…');
  pending.dataset.state = 'streaming';
  $('chat-send').disabled = true;
  try {
    // The answer appears as it is generated: {"delta"} events, then the whole turn.
    let shown = '';
    await streamApi('/v1/chat', { session_id: sessionId, message }, (event) => {
      if (event.delta !== undefined) {
        shown += event.delta;
        pending.textContent = shown;
      } else if (event.answer !== undefined) {
        pending.textContent = event.answer;
      }
    });
  } catch (e) {
    pending.textContent = `Error: ${e.message}`;
    pending.classList.add('error');
  } finally {
    pending.dataset.state = 'done';
    $('chat-send').disabled = false;
  }
}

function setup() {
  const drop = $('drop');
  drop.addEventListener('click', () => $('file').click());
  drop.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') $('file').click(); });
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    choose(e.dataTransfer.files[0]);
  });
  $('file').addEventListener('change', () => choose($('file').files[0]));
  $('inspect').addEventListener('click', inspect);
  $('chat-form').addEventListener('submit', ask);
  api('/v1/model').then((m) => {
    $('model').textContent = `model: ${m.name || m.engine || 'iadgpt'} · ${m.server.workers} worker(s)`;
  }).catch(() => { $('model').textContent = 'model: unavailable'; });
}

setup();

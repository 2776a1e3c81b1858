// The iadgpt web page: upload → POST /v1/detect → overlay, score, answer → POST /v1/chat turns.
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
async function api(path, options = {}, retried = false) {
  const key = sessionStorage.getItem('iadgpt-api-key');
  const headers = Object.assign({}, options.headers || {}, key ? { Authorization: `Bearer ${key}` } : {});
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401 && !retried) {
    const entered = window.prompt('This server needs an API key:');
    if (entered) {
      sessionStorage.setItem('iadgpt-api-key', entered.trim());
      return api(path, options, true);
    }
  }
  let body = null;
  try { body = await response.json(); } catch (e) { /* not JSON */ }
  if (!response.ok) {
    const message = body && body.error ? body.error.message : `HTTP ${response.status}`;
    throw new Error(message);
  }
  return body;
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
  $('chat-send').disabled = true;
  try {
    const r = await api('/v1/chat', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ session_id: sessionId, message }),
    });
    pending.textContent = r.answer;
  } catch (e) {
    pending.textContent = `Error: ${e.message}`;
    pending.classList.add('error');
  } finally {
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

// The painter: brush, eraser, size, zoom, undo and clear over the image; mouse, touch and pen
// through pointer events. The painted layer is sent as a PNG: painted = the area to change.
'use strict';
(() => {
  const root = document.getElementById('painter');
  const canvas = document.getElementById('layer');
  const picture = document.getElementById('picture');
  const stage = document.getElementById('stage');
  const form = document.getElementById('paint-form');
  const status = document.getElementById('status');
  const submit = document.getElementById('submit');
  const sizeInput = document.getElementById('size');
  const sizeValue = document.getElementById('size-value');
  const zoom = document.getElementById('zoom');
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  const width = Number(root.dataset.width);
  const height = Number(root.dataset.height);
  // The token is in this page's address only, never in its text.
  const base = location.pathname.replace(/\/+$/, '');
  const history = [];
  const MAX_HISTORY = 40;
  let drawing = null;
  let painted = false;

  picture.src = base + '/image';

  function applyZoom() {
    const factor = Number(zoom.value) || 1;
    stage.style.width = `${width * factor}px`;
    stage.style.height = `${height * factor}px`;
    picture.style.width = `${width * factor}px`;
    picture.style.height = `${height * factor}px`;
  }

  function tool() {
    return document.getElementById('tool-eraser').checked ? 'eraser' : 'brush';
  }

  function snapshot() {
    history.push(ctx.getImageData(0, 0, width, height));
    if (history.length > MAX_HISTORY) history.shift();
  }

  function point(event) {
    const box = canvas.getBoundingClientRect();
    return {
      x: ((event.clientX - box.left) * width) / box.width,
      y: ((event.clientY - box.top) * height) / box.height,
    };
  }

  function lineWidth(event) {
    const size = Number(sizeInput.value);
    // A pen's pressure thins the stroke; mouse and touch report 0.5 or 0 and draw at full size.
    return event.pointerType === 'pen' && event.pressure > 0 ? Math.max(1, size * event.pressure * 2) : size;
  }

  function dot(at, event) {
    // A zero-length line draws nothing in some browsers: a tap or click paints a round dot.
    ctx.globalCompositeOperation = tool() === 'eraser' ? 'destination-out' : 'source-over';
    ctx.fillStyle = '#ff2a6d';
    ctx.beginPath();
    ctx.arc(at.x, at.y, lineWidth(event) / 2, 0, 2 * Math.PI);
    ctx.fill();
    if (tool() === 'brush') painted = true;
  }

  function stroke(from, to, event) {
    ctx.globalCompositeOperation = tool() === 'eraser' ? 'destination-out' : 'source-over';
    ctx.strokeStyle = '#ff2a6d';
    ctx.lineCap = 'round';
    ctx.lineJoin = 'round';
    ctx.lineWidth = lineWidth(event);
    ctx.beginPath();
    ctx.moveTo(from.x, from.y);
    ctx.lineTo(to.x, to.y);
    ctx.stroke();
    if (tool() === 'brush') painted = true;
  }

  canvas.addEventListener('pointerdown', (event) => {
    if (event.pointerType === 'mouse' && event.button !== 0) return;
    event.preventDefault();
    try {
      canvas.setPointerCapture(event.pointerId);
    } catch (error) {
      // A pointer the browser no longer tracks: the stroke still draws while it moves here.
    }
    snapshot();
    const at = point(event);
    drawing = { id: event.pointerId, last: at };
    dot(at, event);
  });
  canvas.addEventListener('pointermove', (event) => {
    if (!drawing || event.pointerId !== drawing.id) return;
    event.preventDefault();
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
    for (const each of events.length ? events : [event]) {
      const at = point(each);
      stroke(drawing.last, at, each);
      drawing.last = at;
    }
  });
  for (const name of ['pointerup', 'pointercancel', 'lostpointercapture']) {
    canvas.addEventListener(name, (event) => {
      if (drawing && event.pointerId === drawing.id) drawing = null;
    });
  }

  document.getElementById('undo').addEventListener('click', () => {
    const last = history.pop();
    if (last) ctx.putImageData(last, 0, 0);
  });
  document.getElementById('clear').addEventListener('click', () => {
    snapshot();
    ctx.clearRect(0, 0, width, height);
    painted = false;
  });
  document.addEventListener('keydown', (event) => {
    if ((event.ctrlKey || event.metaKey) && event.key === 'z' && event.target.tagName !== 'TEXTAREA') {
      event.preventDefault();
      document.getElementById('undo').click();
    }
  });
  sizeInput.addEventListener('input', () => { sizeValue.value = sizeInput.value; });
  zoom.addEventListener('change', applyZoom);
  applyZoom();

  function say(text, kind) {
    status.textContent = text;
    status.className = kind;
  }

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (!painted && history.length === 0) {
      say(root.dataset.nothing, 'error');
      return;
    }
    submit.disabled = true;
    say(root.dataset.sending, '');
    try {
      const blob = await new Promise((resolve) => canvas.toBlob(resolve, 'image/png'));
      const body = new FormData();
      body.append('prompt', document.getElementById('prompt').value);
      body.append('mask', blob, 'mask.png');
      const response = await fetch(base, { method: 'POST', body, credentials: 'omit' });
      const answer = await response.json().catch(() => ({}));
      if (response.ok) {
        say(answer.message || '', 'ok');
        root.dataset.state = 'queued';
        return;
      }
      say(answer.message || root.dataset.failed, 'error');
      // A refused token will not work again; anything else can be fixed and sent again.
      if (response.status !== 403) submit.disabled = false;
    } catch (error) {
      say(root.dataset.failed, 'error');
      submit.disabled = false;
    }
  });
})();

// actorsched dashboard: polls the coordinator's small JSON endpoints about once a second and
// draws from them.  No framework, no build step.  Everything that comes from the cluster (task
// names, ids, errors, tracebacks, output) enters the page as text nodes, never as HTML.
'use strict';
(() => {
  const STATES = ['WAITING', 'QUEUED', 'ASSIGNED', 'RUNNING', 'RETRYING', 'SUCCEEDED', 'FAILED', 'CANCELLED'];
  const FINAL = new Set(['SUCCEEDED', 'FAILED', 'CANCELLED', 'NOT_FOUND']);
  const SPAN_MAX = 300, SPAN_MIN = 60;  // seconds of history the charts show
  const WIN = 5, NAME_WIN = 10;         // seconds over which a chart point / the name table is measured
  const COLORS = {ok: '#1f9d55', bad: '#d63b3b', blue: '#2f6fde', amber: '#b7791f', grey: '#8a94a6'};
  const $ = (id) => document.getElementById(id);
  const samples = [], points = [], seen = {};
  let busy = false, again = false, tickNo = 0, loop = 0, tasksDirty = true, taskShown = '', taskFinal = false;

  // ------------------------------------------------------------------ helpers
  function h(tag, props, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === 'class') el.className = v;
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v);
    }
    for (const kid of kids) if (kid !== null && kid !== undefined) el.append(kid);  // strings become text nodes
    return el;
  }
  const taskLink = (id) => h('a', {href: '#/task/' + encodeURIComponent(id)}, id);
  const st = (s) => h('span', {class: 'st ' + s}, s);
  const meter = (value, max, label, warn = true) => {  // a bar, red past 90 % when that is a warning
    const frac = max > 0 ? Math.min(1, value / max) : 0, bar = h('b');
    bar.style.width = (frac * 100).toFixed(1) + '%';
    return h('span', {}, h('span', {class: warn && frac > 0.9 ? 'meter hot' : 'meter', title: label}, bar), label);
  };
  function rows(tbody, list, cols, empty) {
    tbody.replaceChildren(...(list.length ? list : [h('tr', {class: 'empty'}, h('td', {colspan: cols}, empty))]));
  }
  const num = (n) => (n || 0).toLocaleString('en-US');
  const rate = (r) => r === null || !isFinite(r) ? '–' : r === 0 ? '0' : r >= 100 ? Math.round(r).toLocaleString('en-US') : r.toFixed(r >= 10 ? 1 : 2);
  function dur(s) {
    if (s === null || s === undefined || !isFinite(s)) return '–';
    const [v, u] = s < 1e-3 ? [s * 1e6, 'µs'] : s < 1 ? [s * 1e3, 'ms'] : s < 120 ? [s, 's'] : [s / 60, 'min'];
    return +v.toPrecision(3) + ' ' + u;
  }
  function stamp(t) {
    if (!t) return '–';
    const d = new Date(t * 1000), p = (n, w = 2) => String(n).padStart(w, '0');
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:` +
      `${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
  }
  function pretty(v) {
    if (v && typeof v === 'object' && 'clipped' in v && 'preview' in v) return `${v.preview}\n[clipped: ${v.clipped}]`;
    const line = JSON.stringify(v);
    return line.length <= 100 ? line : JSON.stringify(v, null, 2);
  }
  function changed(key, body) {  // skip redrawing what did not change, so text selections survive polls
    const text = JSON.stringify(body);
    if (seen[key] === text) return false;
    seen[key] = text;
    return true;
  }

  async function get(url) {
    const ctl = new AbortController(), timer = setTimeout(() => ctl.abort(), 6000);
    try {
      const reply = await fetch(url, {signal: ctl.signal, cache: 'no-store'});
      const json = (reply.headers.get('content-type') || '').includes('json');
      const body = json ? await reply.json() : {error: (await reply.text()).trim()};
      if (reply.status === 401) throw new Error('token needed: open this page as /?token=TOKEN once');
      if (reply.status >= 500) throw new Error(body.error || 'HTTP ' + reply.status);
      return {status: reply.status, body};
    } finally { clearTimeout(timer); }
  }

  // ------------------------------------------------------------------ histograms
  function merge(list) {  // run-time histograms of every name: same bounds, counts added
    list = list.filter(Boolean);
    if (!list.length) return null;
    const out = {le: list[0].le, n: list[0].n.map(() => 0), sum: 0, count: 0};
    for (const x of list) { x.n.forEach((c, i) => { out.n[i] += c; }); out.sum += x.sum; out.count += x.count; }
    return out;
  }
  function quantile(a, b, q) {  // q-quantile of what a (newer, cumulative) saw since b (older)
    if (!a) return null;
    const n = a.n.map((c, i) => c - (b && b.n.length === a.n.length ? b.n[i] : 0)), total = n[n.length - 1];
    if (total <= 0) return null;
    const rank = q * total;
    for (let i = 0; i < n.length; i++) {
      if (n[i] < rank) continue;
      if (i >= a.le.length) return a.le[a.le.length - 1];
      const lo = i ? a.le[i - 1] : 0, below = i ? n[i - 1] : 0, inside = n[i] - below;
      return lo + (a.le[i] - lo) * (inside ? (rank - below) / inside : 1);
    }
    return null;
  }
  const older = (t, win) => {  // the newest sample at least win seconds before t, else the oldest
    for (let i = samples.length - 1; i >= 0; i--) if (samples[i].t <= t - win) return samples[i];
    return samples[0];
  };
  const total = (outcomes, key) => Object.values(outcomes).reduce((a, o) => a + (o[key] || 0), 0);

  // ------------------------------------------------------------------ overview
  function overview(d) {
    const q = d.queue, m = d.metrics, states = q.states || {};
    const s = {t: d.time, epoch: q.epoch, ok: total(m.outcomes, 'succeeded'), failed: total(m.outcomes, 'failed'),
      submitted: q.submitted || 0, wait: m.queue_wait, lat: m.latency, jc: m.journal_commit,
      run: merge(Object.values(m.run_time)), names: m.run_time, outcomes: m.outcomes};
    const last = samples[samples.length - 1];
    if (last && (s.epoch !== last.epoch || s.t <= last.t || s.ok < last.ok || s.submitted < last.submitted)) {
      samples.length = 0; points.length = 0;  // a restarted coordinator counts from zero again
    }
    samples.push(s);
    while (samples.length > 2 && samples[1].t <= s.t - NAME_WIN - 2) samples.shift();
    const b = older(s.t, WIN), dt = s.t - b.t;
    if (dt > 0) {
      points.push({t: s.t, ok: (s.ok - b.ok) / dt, failed: (s.failed - b.failed) / dt, sub: (s.submitted - b.submitted) / dt,
        w50: quantile(s.wait, b.wait, 0.5), w95: quantile(s.wait, b.wait, 0.95),
        r50: quantile(s.run, b.run, 0.5), r95: quantile(s.run, b.run, 0.95),
        l50: quantile(s.lat, b.lat, 0.5), l95: quantile(s.lat, b.lat, 0.95), j95: quantile(s.jc, b.jc, 0.95)});
      while (points.length && points[0].t < s.t - SPAN_MAX - 1) points.shift();
    }
    const workers = d.workers.slice().sort((x, y) => x.worker_id.localeCompare(y.worker_id));
    const slots = workers.reduce((a, w) => a + w.slots, 0), running = workers.reduce((a, w) => a + w.running, 0);
    $('meta').textContent = `epoch ${q.epoch} · ${workers.length} workers · ${slots} slots · ${num(running)} tasks held · ` +
      `updated ${new Date(d.time * 1000).toLocaleTimeString()}`;
    const open = (states.QUEUED || 0) + (states.RETRYING || 0) + (states.WAITING || 0);
    const warn = $('warn');
    warn.hidden = !(open && !workers.length);
    warn.textContent = `${num(open)} tasks are waiting and no worker is connected: start one with ` +
      '`actorsched-worker --connect tcp://COORDINATOR:7701`.';
    cards(states, q);
    workersTable(workers);
    namesTable(s);
    charts();
  }

  function cards(states, q) {
    const box = $('cards'), p = points[points.length - 1];
    if (!box.childElementCount) {
      const card = (id, label, state) => h('div', {class: 'card', 'data-state': state || '', title: state ? 'list ' + label + ' tasks' : ''},
        h('div', {class: 'n', id}), h('div', {class: 'l'}, label));
      box.append(...STATES.map((x) => card('count-' + x, x, x)), card('count-submitted', 'submitted'),
        card('rate-ok', 'succeeded/s'), card('rate-failed', 'failed/s'));
      box.addEventListener('click', (e) => {
        const c = e.target.closest('.card');
        if (c && c.dataset.state) { $('f-state').value = $('f-state').value === c.dataset.state ? '' : c.dataset.state; refilter(); }
      });
    }
    for (const x of STATES) $('count-' + x).textContent = num(states[x]);
    $('count-submitted').textContent = num(q.submitted);
    $('rate-ok').textContent = p ? rate(p.ok) : '–';
    $('rate-failed').textContent = p ? rate(p.failed) : '–';
    for (const c of box.children) c.classList.toggle('sel', !!c.dataset.state && c.dataset.state === $('f-state').value);
  }

  function workersTable(workers) {
    if (!changed('workers', workers)) return;
    const slots = workers.reduce((a, w) => a + w.slots, 0);
    $('workers-sum').textContent = `${workers.length} connected, ${slots} slots`;
    rows($('workers').tBodies[0], workers.map((w) => h('tr', {},
      h('td', {}, h('a', {href: '#/', title: 'list its tasks', onclick: (e) => filterBy(e, 'f-worker', w.worker_id)}, w.worker_id)),
      h('td', {title: `pid ${w.pid}${w.tags.length ? ', tags ' + w.tags.join(' ') : ''}`}, w.host),
      h('td', {}, st(w.state)), h('td', {}, st(w.breaker)),
      h('td', {}, meter(w.running, w.slots, `${num(w.running)} / ${w.slots}`, false)),
      h('td', {}, meter(w.cpu_percent, 100, w.cpu_percent.toFixed(0) + '%')),
      h('td', {}, meter(w.memory_percent, 100, w.memory_percent.toFixed(0) + '%')),
      h('td', {class: 'num'}, w.load_score.toFixed(2)), h('td', {class: 'num'}, dur(w.heartbeat_age_s)),
      h('td', {class: 'num'}, num(w.tasks_done)))), 10, 'no worker connected');
  }

  function namesTable(s) {
    const b = older(s.t, NAME_WIN), dt = s.t - b.t;
    const list = Object.keys(s.names).map((name) => {
      const o = s.outcomes[name] || {}, ob = b.outcomes[name] || {};
      const done = (o.succeeded || 0) + (o.failed || 0) - (ob.succeeded || 0) - (ob.failed || 0);
      return {name, rate: dt > 0 ? done / dt : null, failed: o.failed || 0,
        p50: quantile(s.names[name], b.names[name], 0.5), p95: quantile(s.names[name], b.names[name], 0.95)};
    }).sort((x, y) => (y.rate || 0) - (x.rate || 0) || x.name.localeCompare(y.name)).slice(0, 12);
    rows($('names').tBodies[0], list.map((x) => h('tr', {},
      h('td', {title: x.name}, h('a', {href: '#/', title: 'list its tasks', onclick: (e) => filterBy(e, 'f-name', x.name)}, x.name)),
      h('td', {class: 'num'}, rate(x.rate)), h('td', {class: 'num'}, num(x.failed)),
      h('td', {class: 'num'}, dur(x.p50)), h('td', {class: 'num'}, dur(x.p95)))), 5, 'no task has finished yet');
  }

  // ------------------------------------------------------------------ charts
  function charts() {
    chart('ch-tput', 'lg-tput', false, rate, [['succeeded', COLORS.ok, 'ok'], ['failed', COLORS.bad, 'failed'], ['submitted', COLORS.blue, 'sub']]);
    chart('ch-wait', 'lg-wait', true, dur, [['p50', COLORS.blue, 'w50'], ['p95', COLORS.amber, 'w95']]);
    chart('ch-run', 'lg-run', true, dur, [['p50', COLORS.blue, 'r50'], ['p95', COLORS.amber, 'r95']]);
    chart('ch-lat', 'lg-lat', true, dur, [['p50', COLORS.blue, 'l50'], ['p95', COLORS.amber, 'l95'], ['commit p95', COLORS.grey, 'j95']]);
  }

  function chart(canvasId, legendId, log, fmt, series) {
    const c = $(canvasId), dpr = window.devicePixelRatio || 1, W = c.clientWidth, H = c.clientHeight;
    if (!W || !H) return;
    if (c.width !== Math.round(W * dpr) || c.height !== Math.round(H * dpr)) { c.width = Math.round(W * dpr); c.height = Math.round(H * dpr); }
    const g = c.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, W, H);
    const L = 56, R = 10, T = 8, B = 20, pw = W - L - R, ph = H - T - B;
    const last = points[points.length - 1], now = last ? last.t : Date.now() / 1000;
    const span = Math.min(SPAN_MAX, Math.max(SPAN_MIN, points.length ? now - points[0].t : 0)), t0 = now - span;
    const vals = [];
    for (const p of points) for (const [, , k] of series) if (p[k] !== null && isFinite(p[k]) && (!log || p[k] > 0)) vals.push(p[k]);
    let lo = 0, hi, ticks = [];
    if (log) {
      const e0 = vals.length ? Math.floor(Math.log10(Math.min(...vals))) : -3;
      let e1 = vals.length ? Math.ceil(Math.log10(Math.max(...vals))) : 0;
      if (e1 - e0 < 2) e1 = e0 + 2;
      lo = 10 ** e0; hi = 10 ** e1;
      for (let e = e0; e <= e1; e++) ticks.push(10 ** e);
    } else {
      const max = Math.max(1, ...vals), mag = 10 ** Math.floor(Math.log10(max)), f = max / mag;
      hi = (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
      ticks = [0, hi / 4, hi / 2, 3 * hi / 4, hi];
    }
    const y = log ? (v) => T + ph * (1 - Math.log10(v / lo) / Math.log10(hi / lo)) : (v) => T + ph * (1 - v / hi);
    const x = (t) => L + pw * (t - t0) / span;
    g.font = '11px system-ui, sans-serif';
    g.lineWidth = 1;
    g.strokeStyle = '#e3e6ec';
    g.fillStyle = '#667085';
    g.textAlign = 'right';
    g.textBaseline = 'middle';
    for (const v of ticks) {
      const yy = Math.round(y(v)) + 0.5;
      g.beginPath(); g.moveTo(L, yy); g.lineTo(W - R, yy); g.stroke();
      g.fillText(fmt(v), L - 6, yy);
    }
    g.textAlign = 'center';
    g.textBaseline = 'alphabetic';
    const step = span > 150 ? 60 : 15;
    for (let k = 0; k <= span + 0.5; k += step) {
      g.fillText(k ? `-${k >= 60 ? k / 60 + ' min' : k + ' s'}` : 'now', Math.min(W - R - 12, Math.max(L + 10, x(now - k))), H - 5);
    }
    g.lineWidth = 1.8;
    g.lineJoin = 'round';
    for (const [, color, k] of series) {
      g.strokeStyle = color;
      g.beginPath();
      let pen = false;
      for (const p of points) {
        const v = p[k];
        if (p.t < t0 || v === null || !isFinite(v) || (log && v <= 0)) { pen = false; continue; }
        const xx = x(p.t), yy = y(Math.min(hi, Math.max(lo, v)));
        if (pen) g.lineTo(xx, yy); else g.moveTo(xx, yy);
        pen = true;
      }
      g.stroke();
    }
    $(legendId).replaceChildren(...series.map(([label, color, k]) => {
      const swatch = h('i');
      swatch.style.background = color;
      return h('span', {}, swatch, `${label} ${last ? fmt(last[k]) : '–'}`);
    }));
  }

  // ------------------------------------------------------------------ task list
  function filters() {
    const f = {};
    for (const k of ['state', 'name', 'worker', 'id', 'limit']) { const v = $('f-' + k).value.trim(); if (v) f[k] = v; }
    return f;
  }
  function filterBy(event, input, value) {
    event.preventDefault();
    $(input).value = value;
    refilter();
    $('filters').scrollIntoView({block: 'start'});
  }
  function refilter() {
    tasksDirty = true;
    if (location.hash.startsWith('#/task/')) location.hash = '#/';
    tick();
  }

  async function tasks() {
    const f = filters(), {status, body} = await get('api/tasks?' + new URLSearchParams(f));
    tasksDirty = false;
    const tbody = $('tasks').tBodies[0];
    if (status !== 200) { seen.tasks = ''; rows(tbody, [], 8, body.error || 'HTTP ' + status); return; }
    if (!changed('tasks', [f, body.tasks])) return;
    const list = body.tasks;
    $('tasks-sum').textContent = list.length >= body.limit || body.cut ? `newest ${num(list.length)} shown` : `${num(list.length)} found`;
    const prio = {};
    for (const t of list) prio[t.priority] = (prio[t.priority] || 0) + 1;
    const keys = Object.keys(prio).map(Number).sort((a, b) => a - b);
    $('prio').textContent = list.length ? 'by priority: ' + keys.map((k) => `${k}: ${num(prio[k])}`).join(' · ') : '';
    rows(tbody, list.map((t) => h('tr', {},
      h('td', {title: t.task_id}, taskLink(t.task_id)), h('td', {title: t.name}, t.name), h('td', {}, st(t.state)),
      h('td', {class: 'num'}, String(t.priority)), h('td', {class: 'num'}, String(t.attempt)), h('td', {}, t.worker_id || ''),
      h('td', {}, stamp(t.updated_at).slice(11)),
      h('td', {title: t.error ? t.error.message : ''}, t.error ? `${t.error.type}: ${t.error.message}` : ''))),
    8, 'no task matches');
  }

  // ------------------------------------------------------------------ task page
  async function taskPage(id) {
    const {status, body} = await get('api/task/' + encodeURIComponent(id));
    if (!changed('task', body.task ? [body.task, body.spec] : body)) return;
    const t = body.task, spec = body.spec, out = $('tp-body');
    $('tp-title').replaceChildren('Task ', h('code', {}, id), ' ', t ? st(t.state) : '');
    if (!t) { out.replaceChildren(h('p', {}, body.error || 'HTTP ' + status)); taskFinal = true; return; }
    taskFinal = FINAL.has(t.state);
    if (t.state === 'NOT_FOUND') { out.replaceChildren(h('p', {}, 'No task with this id (never submitted, or purged after its retention).')); return; }
    const item = (k, v) => v === undefined || v === null || v === '' ? [] : [h('dt', {}, k), h('dd', {}, v)];
    const depIds = spec ? spec.all_deps || spec.deps : [];
    const deps = depIds.length ? h('span', {}, ...depIds.flatMap((d, i) => [i ? ', ' : '', taskLink(d)])) : null;
    const parts = [h('dl', {},
      ...item('name', t.name), ...item('state', st(t.state)), ...item('priority', String(t.priority)),
      ...item('attempt', `${t.attempt}${spec && spec.max_attempts ? ' of ' + spec.max_attempts : ''}`),
      ...item('worker', t.worker_id), ...item('depends on', deps), ...item('updated', stamp(t.updated_at)),
      ...(spec ? [...item('timeout', spec.timeout_s ? dur(spec.timeout_s) : 'none'),
        ...item('retry on', spec.retry_on.join(', ')), ...item('tags', spec.tags.join(', '))] : []))];
    if (spec) parts.push(h('h2', {}, 'Arguments'), h('pre', {}, `args ${pretty(spec.args)}\nkwargs ${pretty(spec.kwargs)}`));
    if (t.state === 'SUCCEEDED') parts.push(h('h2', {}, 'Result'), h('pre', {}, pretty(t.value)));
    if (t.error) parts.push(h('h2', {}, 'Error'), h('pre', {class: 'err'}, `${t.error.type}: ${t.error.message}`));
    parts.push(h('h2', {}, `Attempts (${t.history.length})`));
    if (!t.history.length) parts.push(h('p', {}, 'none yet'));
    for (const a of t.history) {
      const took = a.started_at && a.ended_at ? dur(a.ended_at - a.started_at) : '–';
      const box = h('div', {class: 'attempt'},
        h('h3', {}, `Attempt ${a.attempt} on ${a.worker_id || '–'}: `, st(String(a.outcome).toUpperCase())),
        h('div', {}, `started ${stamp(a.started_at)} · ended ${stamp(a.ended_at)} · took ${took}`));
      if (a.error) {
        box.append(h('pre', {class: 'err'}, a.error.traceback || `${a.error.type}: ${a.error.message}`));
      }
      if (a.output) box.append(h('div', {}, 'output'), h('pre', {}, outputText(a.output)));
      parts.push(box);
    }
    if (t.output !== undefined) {
      parts.push(h('h2', {}, 'Output'), h('pre', {class: 'output'}, outputText(t.output) || '(nothing written to stdout or stderr)'));
    }
    out.replaceChildren(...parts);
  }
  function outputText(o) {
    if (o === null || o === undefined) return '';
    if (typeof o === 'string') return o;
    if (Array.isArray(o)) return o.map((x) => typeof x === 'string' ? x : Array.isArray(x) ? x.join(' ') : JSON.stringify(x)).join('\n');
    return Object.entries(o).map(([k, v]) => `--- ${k}\n${typeof v === 'string' ? v : JSON.stringify(v, null, 2)}`).join('\n');
  }

  // ------------------------------------------------------------------ loop
  const route = () => {
    const m = location.hash.match(/^#\/task\/(.+)$/);
    return m ? decodeURIComponent(m[1]) : '';
  };
  function setConn(ok, text) {
    const c = $('conn');
    c.className = 'conn ' + (ok ? 'ok' : 'bad');
    c.textContent = ok ? 'live' : text;
    c.title = ok ? '' : text;
  }
  async function tick() {
    if (busy) { again = true; return; }
    busy = true;
    clearTimeout(loop);
    try {
      const id = route();
      const {body} = await get('api/overview');
      overview(body);
      if (id) {
        if (id !== taskShown) { taskShown = id; taskFinal = false; seen.task = ''; }
        if (!taskFinal) await taskPage(id);
      } else if (tasksDirty || tickNo % 2 === 0) {
        await tasks();
      }
      setConn(true);
    } catch (e) {
      setConn(false, e.name === 'AbortError' ? 'no answer' : e instanceof TypeError ? 'coordinator unreachable' : e.message);
    }
    busy = false;
    tickNo++;
    loop = setTimeout(tick, again ? 0 : document.hidden ? 5000 : 1000);
    again = false;
  }
  function show() {
    const id = route();
    $('overview').hidden = !!id;
    $('taskpage').hidden = !id;
    if (!id) { taskShown = ''; tasksDirty = true; } else window.scrollTo(0, 0);
    tick();
  }

  $('f-state').append(...STATES.map((s) => h('option', {value: s}, s)));
  let debounce = 0;
  $('filters').addEventListener('input', () => { clearTimeout(debounce); debounce = setTimeout(refilter, 250); });
  $('filters').addEventListener('submit', (e) => { e.preventDefault(); refilter(); });
  window.addEventListener('hashchange', show);
  window.addEventListener('resize', charts);
  show();
})();

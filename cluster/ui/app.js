// geocursor status page.
//
// Plain JavaScript: no build step, no library, nothing from outside. It
// talks only to the node that served it (GET /v1/status and /v1/recent,
// once a second), with the read token its user gives it once per browser
// tab (kept in sessionStorage). Without a token, or when the node refuses
// it (401 or 403), it shows the sign-in form and no data.
'use strict';

(function () {
  const TOKEN_KEY = 'geocursor.readToken';
  const POLL_MS = 1000;
  const WINDOW_S = 600; // the charts' span: what the node keeps
  const MIN_WINDOW_S = 120; // the shortest span, while the node's history is young
  const STALE_MS = 3500; // no answer for this long: the data is shown as stale
  const REQUEST_MS = 5000; // a request without an answer by then is given up
  const PALETTE = ['#58a6ff', '#bc8cff', '#39c5bb', '#f0883e', '#ff7eb6', '#a5d65a', '#e3c23b', '#79c0ff'];
  const NONE_COLOR = '#f85149';
  const SVG_NS = 'http://www.w3.org/2000/svg';

  const $ = (id) => document.getElementById(id);
  const nf = new Intl.NumberFormat('en-US');

  const app = {
    token: null,
    timer: null,
    inflight: false,
    status: null,
    recent: null,
    samples: [], // oldest first, each with t (ms since the epoch)
    lastOK: 0,
    lastError: '',
    colors: new Map(),
    // generation is bumped whenever the token is dropped, so that an
    // answer to a request made with it is never shown.
    generation: 0,
  };

  class AuthError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // ---- token ----

  function storedToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || '';
    } catch (e) {
      return '';
    }
  }

  function storeToken(token) {
    try {
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch (e) {
      // Storage may be off; the token then lasts as long as the page.
    }
  }

  // ---- requests ----

  async function getJSON(path, token) {
    const resp = await fetch(path, {
      headers: { Authorization: 'Bearer ' + token, Accept: 'application/json' },
      cache: 'no-store',
      credentials: 'omit',
      redirect: 'error',
      signal: AbortSignal.timeout(REQUEST_MS),
    });
    let body = null;
    try {
      body = await resp.json();
    } catch (e) {
      body = null;
    }
    const message = body && body.error && body.error.message;
    if (resp.status === 401 || resp.status === 403) {
      throw new AuthError(resp.status, message || resp.statusText);
    }
    if (!resp.ok) {
      throw new Error(path + ': ' + resp.status + ' ' + (message || resp.statusText));
    }
    return body;
  }

  function fetchAll(token) {
    const last = app.samples.length ? app.samples[app.samples.length - 1].at : '';
    const recentPath = '/v1/recent' + (last ? '?since=' + encodeURIComponent(last) : '');
    return Promise.all([getJSON('/v1/status', token), getJSON(recentPath, token)]);
  }

  function refusal(err) {
    if (err.status === 401) return 'This node asks for a token.';
    return 'The token was refused (' + err.status + '): give the read token of this cluster.';
  }

  // ---- sign in and out ----

  function showLogin(message) {
    stopPolling();
    app.generation++;
    app.token = null;
    clearData();
    $('app').hidden = true;
    $('login').hidden = false;
    $('login-error').textContent = message || '';
    $('login-submit').disabled = false;
    $('login-submit').textContent = 'Show status';
    const input = $('token');
    input.value = '';
    input.focus();
  }

  function showApp() {
    $('login').hidden = true;
    $('app').hidden = false;
  }

  async function onLogin(ev) {
    ev.preventDefault();
    const token = $('token').value.trim();
    if (!token) {
      $('login-error').textContent = 'Enter the read token.';
      return;
    }
    const button = $('login-submit');
    button.disabled = true;
    button.textContent = 'Checking…';
    $('login-error').textContent = '';
    const gen = ++app.generation;
    try {
      const [status, recent] = await fetchAll(token);
      if (gen !== app.generation) return;
      app.token = token;
      storeToken(token);
      accept(status, recent);
      showApp();
      render();
      startPolling();
    } catch (err) {
      if (gen !== app.generation) return;
      button.disabled = false;
      button.textContent = 'Show status';
      $('login-error').textContent = err instanceof AuthError ? refusal(err) : 'This node did not answer: ' + err.message;
    }
  }

  function signOut() {
    storeToken('');
    showLogin('Signed out.');
  }

  // ---- polling ----

  function startPolling() {
    stopPolling();
    app.timer = setInterval(tick, POLL_MS);
  }

  function stopPolling() {
    if (app.timer) clearInterval(app.timer);
    app.timer = null;
  }

  async function tick() {
    if (!app.token) return;
    if (app.inflight) {
      renderConnection();
      return;
    }
    app.inflight = true;
    const gen = app.generation;
    try {
      const [status, recent] = await fetchAll(app.token);
      if (gen !== app.generation) return;
      accept(status, recent);
      render();
    } catch (err) {
      if (gen !== app.generation) return;
      if (err instanceof AuthError) {
        storeToken('');
        showLogin(refusal(err));
        return;
      }
      app.lastError = err.message || String(err);
      renderConnection();
    } finally {
      app.inflight = false;
    }
  }

  // accept takes a pair of answers: the samples are added to those kept,
  // and the oldest beyond the window dropped.
  function accept(status, recent) {
    if (app.recent && app.recent.node_id !== recent.node_id) app.samples = [];
    const lastT = app.samples.length ? app.samples[app.samples.length - 1].t : -Infinity;
    for (const s of recent.samples || []) {
      s.t = Date.parse(s.at);
      if (s.t > lastT) app.samples.push(s);
    }
    if (app.samples.length) {
      const cut = app.samples[app.samples.length - 1].t - (WINDOW_S + 5) * 1000;
      let i = 0;
      while (i < app.samples.length && app.samples[i].t < cut) i++;
      if (i) app.samples.splice(0, i);
    }
    recent.current.t = Date.parse(recent.current.at);
    app.status = status;
    app.recent = recent;
    app.lastOK = Date.now();
    app.lastError = '';
  }

  // ---- helpers ----

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'style') e.style.cssText = v; // CSSOM: the page's policy allows no style attribute
      else e.setAttribute(k, v === true ? '' : v);
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function svg(tag, attrs, ...children) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null) continue;
      if (k === 'style') e.style.cssText = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function fill(id, ...children) {
    const e = $(id);
    e.replaceChildren(...children.filter((c) => c !== null && c !== undefined));
    return e;
  }

  function text(id, value) {
    $(id).textContent = value;
  }

  function num(v) {
    return v === null || v === undefined ? '—' : nf.format(v);
  }

  function compact(v) {
    if (v === null || v === undefined) return '—';
    const a = Math.abs(v);
    if (a >= 1e9) return (v / 1e9).toFixed(a >= 1e10 ? 0 : 1) + 'G';
    if (a >= 1e6) return (v / 1e6).toFixed(a >= 1e7 ? 0 : 1) + 'M';
    if (a >= 1e4) return (v / 1e3).toFixed(a >= 1e5 ? 0 : 1) + 'k';
    if (a >= 100 || Number.isInteger(v)) return nf.format(Math.round(v));
    return v.toFixed(a >= 10 ? 1 : 2).replace(/\.?0+$/, '');
  }

  function seconds(s) {
    if (s === null || s === undefined) return '—';
    if (s < 10) return s.toFixed(1) + ' s';
    if (s < 120) return Math.round(s) + ' s';
    if (s < 7200) return Math.round(s / 60) + ' min';
    return (s / 3600).toFixed(1) + ' h';
  }

  function duration(ms) {
    if (ms < 1000) return Math.round(ms) + ' ms';
    return seconds(ms / 1000);
  }

  function clock(t) {
    return new Date(t).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
  }

  function hhmm(t) {
    return new Date(t).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', hour12: false });
  }

  function ago(t) {
    const s = Math.max(0, (serverNow() - t) / 1000);
    if (s < 60) return Math.round(s) + ' s ago';
    if (s < 3600) return Math.round(s / 60) + ' min ago';
    if (s < 172800) return Math.round(s / 3600) + ' h ago';
    return Math.round(s / 86400) + ' days ago';
  }

  // serverNow is the answering node's time now, as far as the page can
  // tell: its last sample's time moved on by the time passed since.
  function serverNow() {
    if (!app.recent) return Date.now();
    return app.recent.current.t + (Date.now() - app.lastOK);
  }

  function colorOf(id) {
    if (!id) return NONE_COLOR;
    if (!app.colors.has(id)) app.colors.set(id, PALETTE[app.colors.size % PALETTE.length]);
    return app.colors.get(id);
  }

  // assignColors gives the members their colours in ID order, so that
  // every page shows node1 in the same colour.
  function assignColors(st) {
    const ids = st.members.map((m) => m.id).sort();
    for (const id of ids) colorOf(id);
  }

  function swatch(id, cls) {
    return el('i', { class: cls || '', style: 'background:' + colorOf(id) });
  }

  function nodeLabel(id, extra) {
    if (!id) return el('span', { class: 'node value-red' }, 'none');
    return el('span', { class: 'node' }, swatch(id), id, extra || null);
  }

  function member(st, id) {
    return st.members.find((m) => m.id === id);
  }

  // ---- what the page shows ----

  // holderNow is who does the work: the lease holder in the status
  // document, else (between two batches) the last holder the node's
  // recorder names; none when the lease was revoked or ran out.
  function holderNow(st, rc) {
    if (st.lease.holder) return { id: st.lease.holder, held: true };
    if (rc.current.holder) return { id: rc.current.holder, held: false };
    return { id: null, held: false };
  }

  function noHolderFor() {
    let since = null;
    for (let i = app.samples.length - 1; i >= 0 && !app.samples[i].holder; i--) since = app.samples[i].t;
    return since === null ? 0 : (serverNow() - since) / 1000;
  }

  // rates is the throughput over time: events processed per second,
  // each point averaged over the five seconds before it, since the
  // counter moves in steps (a holder records its progress per grant, or
  // every 100 ms through a backlog).
  function rates() {
    const out = [];
    const s = app.samples;
    const back = 5;
    for (let i = 1; i < s.length; i++) {
      const dt1 = (s[i].t - s[i - 1].t) / 1000;
      if (dt1 <= 0 || dt1 > 2.5) {
        out.push({ t: s[i].t, v: null });
        continue;
      }
      let j = i - 1;
      while (j > 0 && i - j < back && (s[j].t - s[j - 1].t) / 1000 <= 2.5) j--;
      const dt = (s[i].t - s[j].t) / 1000;
      out.push({ t: s[i].t, v: Math.max(0, s[i].events_processed - s[j].events_processed) / dt });
    }
    return out;
  }

  function rateOver(span) {
    const s = app.samples;
    if (s.length < 2) return null;
    const last = s[s.length - 1];
    let first = s[0];
    for (let i = s.length - 2; i >= 0; i--) {
      first = s[i];
      if (last.t - s[i].t >= span * 1000) break;
    }
    const dt = (last.t - first.t) / 1000;
    if (dt <= 0) return null;
    return Math.max(0, last.events_processed - first.events_processed) / dt;
  }

  function recentFailover(rc, within) {
    const now = serverNow();
    let latest = null;
    for (const f of rc.failovers) {
      const t = Date.parse(f.lost_at);
      if (now - t <= within * 1000 && (!latest || t > Date.parse(latest.lost_at))) latest = f;
    }
    return latest;
  }

  // assess is the state at a glance: 0 green, 1 amber, 2 red, with why.
  function assess(st, rc) {
    const reasons = [];
    let level = 0;
    const add = (l, why) => {
      level = Math.max(level, l);
      reasons.push({ l, why });
    };
    if (!st.leader) add(2, 'no Raft leader');
    const voters = st.members.filter((m) => m.voter);
    const up = voters.filter((m) => m.reachable).length;
    if (voters.length && up * 2 <= voters.length) add(2, 'quorum lost: ' + up + ' of ' + voters.length + ' voters reachable');
    const down = st.members.filter((m) => !m.reachable).map((m) => m.id);
    if (down.length) add(1, down.join(', ') + (down.length > 1 ? ' are' : ' is') + ' unreachable');
    const h = holderNow(st, rc);
    if (st.cursor.paused) add(1, 'processing is paused');
    else if (!h.id) {
      const s = noHolderFor();
      add(s >= 10 ? 2 : 1, 'no lease holder' + (s >= 1 ? ' for ' + seconds(s) : ''));
    } else if (member(st, h.id) && !member(st, h.id).reachable) {
      add(2, 'the holder ' + h.id + ' is unreachable');
    }
    const lag = st.cursor.lag_seconds;
    if (lag !== null && lag !== undefined) {
      if (lag > 60) add(2, 'lag ' + seconds(lag));
      else if (lag > 5) add(1, 'lag ' + seconds(lag));
    }
    if (st.databases) {
      if (st.databases.source !== 'ok') add(1, 'source database: ' + st.databases.source);
      if (st.databases.tracking !== 'ok') add(1, 'tracking database: ' + st.databases.tracking);
    }
    const d = st.delivery;
    if (d) {
      for (const [name, v] of [['Sidekiq Redis', d.sidekiq_redis], ['cache Redis', d.cache_redis]]) {
        if (v !== 'ok' && v !== 'not configured') add(1, name + ': ' + v);
      }
      if (d.lost_in_redis > 0) add(1, nf.format(d.lost_in_redis) + ' jobs lost in Redis');
    }
    const f = recentFailover(rc, 120);
    if (f) add(1, 'failover ' + ago(Date.parse(f.lost_at)) + ': ' + f.from + ' → ' + (f.to || '?'));
    if (!reasons.length) {
      reasons.push({ l: 0, why: 'all ' + st.members.length + ' members reachable' });
      if (h.id) reasons.push({ l: 0, why: h.id + ' processing, lag ' + seconds(lag) });
    }
    reasons.sort((a, b) => b.l - a.l);
    return { level, reasons };
  }

  const LEVELS = [
    { cls: 'level-green', word: 'Healthy' },
    { cls: 'level-amber', word: 'Degraded' },
    { cls: 'level-red', word: 'Critical' },
  ];

  // ---- rendering ----

  function render() {
    const st = app.status;
    const rc = app.recent;
    if (!st || !rc) return;
    assignColors(st);
    renderHolder(st, rc);
    renderLag(st);
    renderThroughput();
    renderState(st, rc);
    renderTimeline(rc);
    renderCharts(rc);
    renderMembers(st, rc);
    renderCursor(st);
    renderDelivery(st);
    renderFailovers(rc);
    renderDeadLetters(st, rc);
    renderConnection();
    text('footer', 'Served by ' + st.node_id + ' · Raft term ' + st.term + ', commit index ' + nf.format(st.commit_index) +
      ' · history: the last ' + Math.round(WINDOW_S / 60) + ' minutes as ' + st.node_id + ' recorded them, one sample a second');
  }

  function renderHolder(st, rc) {
    const h = holderNow(st, rc);
    const card = document.querySelector('.kpi-holder');
    card.classList.toggle('none', !h.id);
    card.style.setProperty('--holder-color', h.id ? colorOf(h.id) : NONE_COLOR);
    $('holder-swatch').style.background = h.id ? colorOf(h.id) : NONE_COLOR;
    text('holder', h.id || 'none');
    $('holder').dataset.held = h.held ? 'true' : 'false';
    const parts = [];
    if (h.held) {
      const left = st.lease.expires_at ? (Date.parse(st.lease.expires_at) - serverNow()) / 1000 : null;
      parts.push(el('strong', {}, 'processing'), ' · token ' + nf.format(st.lease.token));
      if (left !== null) parts.push(' · expires in ' + seconds(Math.max(0, left)));
    } else if (h.id) {
      parts.push(el('strong', {}, 'idle between batches'), ' · token ' + nf.format(st.lease.token));
    } else {
      parts.push(el('strong', { class: 'value-red' }, 'no holder'), ' · a standby takes over');
    }
    const m = h.id && member(st, h.id);
    if (h.id && m && !m.reachable) parts.push(' · ', el('strong', { class: 'value-red' }, 'unreachable'));
    fill('holder-detail', ...parts);
  }

  function renderLag(st) {
    const c = st.cursor;
    const lagEl = $('lag-events');
    lagEl.textContent = c.lag_events === null || c.lag_events === undefined ? '—' : compact(c.lag_events);
    const s = c.lag_seconds;
    lagEl.className = 'kpi-value' + (s > 60 ? ' value-red' : s > 5 ? ' value-amber' : '');
    if (c.lag_seconds === null || c.lag_seconds === undefined) {
      fill('lag-detail', st.databases ? 'the source head is not known yet' : 'not known on ' + st.node_id + ' (a witness)');
    } else {
      fill('lag-detail', el('strong', {}, seconds(s)), ' behind the source · head ' + num(c.source_last_event_id));
    }
    text('lag-events-now', c.lag_events === null || c.lag_events === undefined ? '' : num(c.lag_events));
    text('lag-seconds-now', s === null || s === undefined ? '' : seconds(s));
  }

  function renderThroughput() {
    const r10 = rateOver(10);
    const rAll = rateOver(WINDOW_S);
    text('throughput', r10 === null ? '—' : compact(r10));
    const last = app.samples[app.samples.length - 1];
    fill('throughput-detail',
      'average ', el('strong', {}, rAll === null ? '—' : compact(rAll) + '/s'), ' over ' + spanLabel(),
      last ? ' · ' + compact(last.events_processed) + ' processed' : '');
    text('throughput-now', r10 === null ? '' : compact(r10) + '/s');
  }

  function spanLabel() {
    const s = app.samples;
    if (s.length < 2) return 'the last seconds';
    const span = (s[s.length - 1].t - s[0].t) / 1000;
    return span >= 90 ? Math.round(span / 60) + ' min' : Math.round(span) + ' s';
  }

  function renderState(st, rc) {
    const a = assess(st, rc);
    const lv = LEVELS[a.level];
    const card = $('state-card');
    card.className = 'kpi kpi-state ' + lv.cls;
    text('state', lv.word);
    fill('state-reasons', ...a.reasons.slice(0, 3).map((r) => el('li', { title: r.why }, r.why)));
    $('overall').className = 'overall ' + lv.cls;
    text('overall-text', lv.word + (a.level ? ' · ' + a.reasons[0].why : ''));
  }

  function renderConnection() {
    const conn = $('conn');
    if (!app.status) {
      conn.textContent = '';
      return;
    }
    const stale = Date.now() - app.lastOK > STALE_MS;
    conn.classList.toggle('stale', stale);
    $('app').classList.toggle('stale', stale);
    if (stale) {
      conn.textContent = 'no answer from ' + app.status.node_id + ' since ' + clock(app.lastOK) + ' · retrying' +
        (app.lastError ? ' (' + app.lastError + ')' : '');
      return;
    }
    conn.replaceChildren(el('span', { class: 'live' }), 'via ' + app.status.node_id + ' · updated ' + clock(app.lastOK));
  }

  // timeWindow is the span the charts show, up to the node's newest
  // sample: the last ten minutes, or as much as the node has recorded
  // (at least two minutes), so that a young history fills the width.
  function timeWindow(rc) {
    const t1 = rc.current.t;
    const first = app.samples.length ? app.samples[0].t : t1;
    const span = Math.min(WINDOW_S * 1000, Math.max(MIN_WINDOW_S * 1000, t1 - first));
    return [t1 - span, t1];
  }

  // ticks are the times to label on a time axis: whole minutes, or every
  // 30 s over a short span, spaced at least minGap pixels apart.
  function ticks(t0, t1, width) {
    const span = t1 - t0;
    const minGap = 56;
    let step = span <= 240000 ? 30000 : 60000;
    while ((width * step) / span < minGap) step *= 2;
    const out = [];
    for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) out.push(t);
    return { list: out, fmt: step < 60000 ? clock : hhmm };
  }

  function renderTimeline(rc) {
    const host = $('timeline');
    const W = Math.max(200, host.clientWidth);
    const H = host.clientHeight || 74;
    const padL = 8;
    const padR = 8;
    const bandTop = 4;
    const bandH = H - 26;
    const [t0, t1] = timeWindow(rc);
    const x = (t) => padL + ((t - t0) / (t1 - t0)) * (W - padL - padR);
    const root = svg('svg', { width: W, height: H, viewBox: '0 0 ' + W + ' ' + H, role: 'img', 'aria-label': 'lease holders over the last ten minutes' });
    root.append(svg('defs', {},
      svg('pattern', { id: 'none-hatch', width: 8, height: 8, patternUnits: 'userSpaceOnUse', patternTransform: 'rotate(45)' },
        svg('rect', { width: 8, height: 8, fill: 'rgba(248,81,73,0.18)' }),
        svg('line', { x1: 0, y1: 0, x2: 0, y2: 8, stroke: NONE_COLOR, 'stroke-width': 3 }))));
    root.append(svg('rect', { x: padL, y: bandTop, width: W - padL - padR, height: bandH, rx: 5, fill: '#10151c', stroke: '#222b38' }));

    // Runs of samples with the same holder; a sample stands for the time
    // up to the next one (at most two intervals: beyond is no data).
    const runs = [];
    const s = app.samples;
    const step = (rc.interval_seconds || 1) * 1000;
    for (let i = 0; i < s.length; i++) {
      const from = s[i].t;
      let to = i + 1 < s.length ? s[i + 1].t : rc.current.t;
      if (to - from > 2 * step) to = from + step;
      if (to <= t0 || from >= t1) continue;
      const id = s[i].holder || null;
      const prev = runs[runs.length - 1];
      if (prev && prev.id === id && Math.abs(prev.to - from) < 1) prev.to = to;
      else runs.push({ id, from: Math.max(from, t0), to: Math.min(to, t1) });
    }
    const held = new Map();
    for (const r of runs) {
      held.set(r.id, (held.get(r.id) || 0) + (r.to - r.from));
      const x0 = x(r.from);
      const w = Math.max(1, x(r.to) - x0);
      root.append(svg('rect', {
        x: x0, y: bandTop, width: w, height: bandH,
        fill: r.id ? colorOf(r.id) : 'url(#none-hatch)', opacity: r.id ? 0.88 : 1,
      }, svg('title', {}, (r.id || 'no holder') + ': ' + clock(r.from) + ' – ' + clock(r.to))));
      if (r.id && w > 56) {
        root.append(svg('text', { x: x0 + 8, y: bandTop + bandH / 2 + 4, fill: '#0d1117', style: 'fill:#0d1117;font-weight:700;font-size:12px' }, r.id));
      }
    }
    if (!runs.length) root.append(svg('text', { x: W / 2, y: bandTop + bandH / 2 + 4, 'text-anchor': 'middle', class: 'empty' }, 'no samples yet'));
    for (const f of rc.failovers) {
      const t = Date.parse(f.lost_at);
      if (t < t0 || t > t1) continue;
      const fx = x(t);
      root.append(svg('line', { x1: fx, x2: fx, y1: bandTop - 2, y2: bandTop + bandH + 2, stroke: '#fff', 'stroke-width': 2 }));
      root.append(svg('path', { d: 'M' + (fx - 5) + ' ' + (bandTop + bandH + 9) + 'l5 -7l5 7z', fill: NONE_COLOR },
        svg('title', {}, 'failover at ' + clock(t) + ': ' + f.from + ' → ' + (f.to || '?') + ' (' + f.kind + ')')));
    }
    const tt = ticks(t0, t1, W);
    for (const t of tt.list) {
      root.append(svg('text', { x: x(t), y: H - 2, 'text-anchor': 'middle' }, tt.fmt(t)));
    }
    host.replaceChildren(root);

    const total = [...held.values()].reduce((a, b) => a + b, 0) || 1;
    const legend = [...held.entries()].sort((a, b) => b[1] - a[1]).map(([id, ms]) =>
      el('span', {}, el('i', { style: id ? 'background:' + colorOf(id) : 'background:' + NONE_COLOR }), id || 'no holder',
        el('b', {}, share(ms / total))));
    if (rc.failovers.some((f) => Date.parse(f.lost_at) >= t0)) {
      legend.push(el('span', {}, el('i', { style: 'background:' + NONE_COLOR + ';clip-path:polygon(50% 0,100% 100%,0 100%)' }), 'failover'));
    }
    fill('timeline-legend', ...legend);
  }

  // niceTop is the top of a chart's scale: four steps of a round size
  // (1, 2, 2.5 or 5 times a power of ten) that reach v, and at least floor.
  function share(f) {
    const pc = 100 * f;
    return pc > 0 && pc < 1 ? '<1%' : Math.round(pc) + '%';
  }

  function niceTop(v, floor) {
    const raw = Math.max(v, floor) / 4;
    const p = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const k of [1, 2, 2.5, 5, 10]) {
      if (k * p >= raw - 1e-12) return 4 * k * p;
    }
    return 40 * p;
  }

  // lineChart draws points ({t, v}, v null for no data) over the window,
  // with the failovers marked.
  function lineChart(hostId, points, opts) {
    const host = $(hostId);
    const W = Math.max(200, host.clientWidth);
    const H = host.clientHeight || 170;
    const padL = 46;
    const padR = 10;
    const padT = 8;
    const padB = 20;
    const [t0, t1] = timeWindow(app.recent);
    const vis = points.filter((p) => p.t >= t0 && p.t <= t1);
    const vmax = niceTop(Math.max(0, ...vis.filter((p) => p.v !== null).map((p) => p.v)), opts.floor);
    const x = (t) => padL + ((t - t0) / (t1 - t0)) * (W - padL - padR);
    const y = (v) => padT + (1 - v / vmax) * (H - padT - padB);
    const root = svg('svg', { width: W, height: H, viewBox: '0 0 ' + W + ' ' + H, role: 'img', 'aria-label': opts.label });
    const gid = 'grad-' + hostId;
    root.append(svg('defs', {}, svg('linearGradient', { id: gid, x1: 0, y1: 0, x2: 0, y2: 1 },
      svg('stop', { offset: '0%', 'stop-color': opts.color, 'stop-opacity': 0.35 }),
      svg('stop', { offset: '100%', 'stop-color': opts.color, 'stop-opacity': 0.02 }))));
    for (let i = 0; i <= 4; i++) {
      const v = (vmax * i) / 4;
      const gy = y(v);
      root.append(svg('line', { x1: padL, x2: W - padR, y1: gy, y2: gy, class: i === 0 ? 'axis' : 'gridline' }));
      root.append(svg('text', { x: padL - 6, y: gy + 4, 'text-anchor': 'end' }, opts.fmt(v)));
    }
    const tt = ticks(t0, t1, W - padL);
    for (const t of tt.list) {
      root.append(svg('text', { x: x(t), y: H - 4, 'text-anchor': 'middle' }, tt.fmt(t)));
    }
    for (const f of app.recent.failovers) {
      const t = Date.parse(f.lost_at);
      if (t < t0 || t > t1) continue;
      root.append(svg('line', { x1: x(t), x2: x(t), y1: padT, y2: H - padB, class: 'failover-mark' }));
    }
    // Segments of consecutive points with data.
    const segs = [];
    let cur = [];
    for (const p of vis) {
      if (p.v === null) {
        if (cur.length) segs.push(cur);
        cur = [];
      } else cur.push(p);
    }
    if (cur.length) segs.push(cur);
    const base = y(0);
    for (const seg of segs) {
      const d = seg.map((p, i) => (i ? 'L' : 'M') + x(p.t).toFixed(1) + ' ' + y(p.v).toFixed(1)).join('');
      const area = d + 'L' + x(seg[seg.length - 1].t).toFixed(1) + ' ' + base + 'L' + x(seg[0].t).toFixed(1) + ' ' + base + 'Z';
      root.append(svg('path', { d: area, fill: 'url(#' + gid + ')' }));
      root.append(svg('path', { d, class: 'line', stroke: opts.color }));
    }
    const last = vis.length ? vis[vis.length - 1] : null;
    if (last && last.v !== null) {
      root.append(svg('circle', { cx: x(last.t), cy: y(last.v), r: 3.5, fill: opts.color, stroke: '#0d1117', 'stroke-width': 2 }));
    }
    if (!segs.length) {
      root.append(svg('text', { x: (padL + W) / 2, y: H / 2, 'text-anchor': 'middle', class: 'empty' }, opts.empty));
    }
    host.replaceChildren(root);
  }

  function renderCharts() {
    const s = app.samples;
    const none = app.status && app.status.databases ? 'no figures yet' : 'not known on this node (a witness)';
    lineChart('chart-lag-events', s.map((p) => ({ t: p.t, v: p.lag_events })), {
      color: '#58a6ff', floor: 8, fmt: compact, label: 'lag in events', empty: none,
    });
    lineChart('chart-lag-seconds', s.map((p) => ({ t: p.t, v: p.lag_seconds })), {
      color: '#e3a82b', floor: 0.4, fmt: (v) => (v >= 10 ? compact(v) : v.toFixed(v >= 1 ? 1 : 2).replace(/\.?0+$/, '') || '0'), label: 'lag in seconds', empty: none,
    });
    lineChart('chart-throughput', rates(), {
      color: '#3fb950', floor: 8, fmt: compact, label: 'events processed per second, over 5 s', empty: 'no figures yet',
    });
  }

  function renderMembers(st, rc) {
    const h = holderNow(st, rc);
    const rows = [...st.members].sort((a, b) => a.id.localeCompare(b.id)).map((m) => {
      const badges = [];
      if (m.id === (st.leader && st.leader.id)) badges.push(el('span', { class: 'badge badge-blue' }, 'leader'));
      if (m.id === h.id) badges.push(el('span', { class: 'badge badge-green' }, 'holder'));
      return el('tr', { 'data-node': m.id },
        el('td', { class: 'node-cell' }, nodeLabel(m.id), ...badges, m.id === st.node_id ? el('div', { class: 'self' }, 'this node') : null),
        el('td', {}, m.role),
        el('td', {}, m.voter ? 'yes' : 'no'),
        el('td', {}, el('span', { class: 'health ' + (m.reachable ? 'ok' : 'bad') }, m.reachable ? 'reachable' : 'unreachable')),
        el('td', { class: 'addr' }, m.http_addr || '—'));
    });
    fill('members', ...(rows.length ? rows : [el('tr', {}, el('td', { class: 'empty', colspan: 5 }, 'no members'))]));
    text('leader-line', st.leader ? 'leader ' + st.leader.id : 'no leader');
    $('leader-line').className = 'panel-figure' + (st.leader ? '' : ' value-red');
  }

  function fact(dt, dd, cls, small) {
    return [el('dt', {}, dt), el('dd', { class: cls || '', title: typeof dd === 'string' ? dd : null }, dd, small ? el('small', {}, small) : null)];
  }

  function dbState(v) {
    return v === 'ok' ? 'ok' : 'bad';
  }

  function renderCursor(st) {
    const c = st.cursor;
    const s = st.stats;
    const facts = [
      ...fact('Last event', num(c.last_event_id), '', c.last_event_date ? clock(Date.parse(c.last_event_date)) : null),
      ...fact('Source head', num(c.source_last_event_id), c.source_last_event_id === null ? 'none' : ''),
      ...fact('Safe cursor', num(c.safe_event_id), '', 'event_log_states'),
      ...fact('Open gaps', num(c.open_gaps), c.open_gaps > 0 ? '' : 'none'),
      ...fact('Processed', num(s.events_processed), '', 'in ' + num(s.batches) + ' batches'),
      ...fact('Dead letters', num(s.dead_letters)),
      ...fact('Gaps dropped', num(s.gaps_dropped), s.gaps_dropped ? '' : 'none'),
    ];
    if (s.events_pruned_unseen) facts.push(...fact('Pruned unseen', num(s.events_pruned_unseen), 'bad'));
    if (st.databases) {
      facts.push(...fact('Source database', st.databases.source, dbState(st.databases.source)));
      facts.push(...fact('Tracking database', st.databases.tracking, dbState(st.databases.tracking)));
    } else {
      facts.push(...fact('Databases', 'none on ' + st.node_id + ' (a witness)', 'none'));
    }
    fill('cursor', ...facts);
    $('paused').hidden = !c.paused;
  }

  function renderDelivery(st) {
    const d = st.delivery;
    if (!d) {
      fill('delivery', ...fact('Delivery', 'no delivery block on ' + st.node_id, 'none'),
        ...fact('Queue', 'geo_jobs', 'none', 'sites consume it'));
      return;
    }
    const redis = (v) => (v === 'ok' ? 'ok' : v === 'not configured' ? 'none' : 'bad');
    fill('delivery',
      ...fact('Backlog', num(d.backlog), d.backlog > 10000 ? 'bad' : '', 'jobs'),
      ...fact('Delivered', num(d.delivered)),
      ...fact('Last job', num(d.last_job_id), '', 'event ' + num(d.last_event_id)),
      ...fact('Sidekiq Redis', d.sidekiq_redis, redis(d.sidekiq_redis)),
      ...fact('Cache Redis', d.cache_redis, redis(d.cache_redis)),
      ...fact('Lost in Redis', num(d.lost_in_redis), d.lost_in_redis ? 'bad' : 'none'),
      ...fact('Rate limit', d.rate_limit ? compact(d.rate_limit) + ' jobs/s' : 'none', d.rate_limit ? '' : 'none'),
      ...(d.tracking_error ? fact('Tracking', d.tracking_error, 'bad') : []),
      ...fact('Read', d.read_at ? ago(Date.parse(d.read_at)) : 'not yet', d.read_at ? '' : 'none'));
  }

  const KIND_BADGE = { revoked: 'badge-red', expired: 'badge-amber', gone: 'badge-amber' };
  const KIND_TITLE = {
    revoked: 'the leader revoked the lease of a holder it could not reach',
    expired: 'the lease ran out before another peer took it',
    gone: 'the holder released the lease after its last batch, then stopped answering',
  };

  function renderFailovers(rc) {
    const list = [...rc.failovers].reverse();
    const rows = list.map((f) => {
      const lost = Date.parse(f.lost_at);
      const taken = f.taken_at ? Date.parse(f.taken_at) : null;
      const gap = taken === null ? serverNow() - lost : taken - lost;
      return el('tr', { 'data-from': f.from, 'data-to': f.to || '' },
        el('td', { class: 'when' }, clock(lost), el('div', { class: 'self' }, ago(lost))),
        el('td', {}, el('span', { class: 'badge ' + (KIND_BADGE[f.kind] || ''), title: KIND_TITLE[f.kind] || '' }, f.kind)),
        el('td', {}, nodeLabel(f.from), el('div', { class: 'self' }, 'token ' + nf.format(f.from_token))),
        el('td', {}, f.to ? nodeLabel(f.to) : el('span', { class: 'value-amber' }, 'nobody yet'),
          f.to ? el('div', { class: 'self' }, 'token ' + nf.format(f.to_token)) : null),
        f.kind === 'gone'
          ? el('td', { class: 'num', title: 'not known: the holder stopped between two batches, some time after its last release' }, '—')
          : el('td', { class: 'num' }, (taken === null ? '… ' : '') + duration(Math.max(0, gap))));
    });
    fill('failovers', ...(rows.length ? rows : [el('tr', {}, el('td', { class: 'empty', colspan: 5 }, 'none recorded'))]));
  }

  function renderDeadLetters(st, rc) {
    text('dead-letters-total', st.stats ? num(st.stats.dead_letters) + ' in total' : '');
    const dl = rc.dead_letters;
    if (!dl) {
      fill('dead-letters', el('tr', {}, el('td', { class: 'empty', colspan: 3 },
        st.databases ? 'not read yet' : st.node_id + ' has no tracking database (a witness): open the page on a processing node')));
      return;
    }
    const rows = dl.recent.map((d) => {
      const t = Date.parse(d.created_at);
      return el('tr', {},
        el('td', { class: 'num' }, num(d.event_id)),
        el('td', { class: 'reason' }, d.reason),
        el('td', { class: 'when', title: new Date(t).toISOString() }, ago(t)));
    });
    if (dl.error) rows.unshift(el('tr', {}, el('td', { class: 'empty value-red', colspan: 3 }, 'cannot read them: ' + dl.error)));
    fill('dead-letters', ...(rows.length ? rows : [el('tr', {}, el('td', { class: 'empty', colspan: 3 }, 'none'))]));
  }

  function clearData() {
    app.status = null;
    app.recent = null;
    app.samples = [];
    for (const id of ['holder', 'holder-detail', 'lag-events', 'lag-detail', 'throughput', 'throughput-detail', 'state',
      'state-reasons', 'timeline', 'timeline-legend', 'chart-lag-events', 'chart-lag-seconds', 'chart-throughput',
      'lag-events-now', 'lag-seconds-now', 'throughput-now', 'members', 'leader-line', 'cursor', 'delivery',
      'failovers', 'dead-letters', 'dead-letters-total', 'conn', 'footer']) {
      $(id).replaceChildren();
    }
    text('overall-text', 'connecting…');
    $('overall').className = 'overall level-unknown';
    $('state-card').className = 'kpi kpi-state level-unknown';
    $('app').classList.remove('stale');
  }

  // ---- start ----

  let resizeTimer = null;
  window.addEventListener('resize', () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(render, 100);
  });

  document.addEventListener('DOMContentLoaded', () => {
    $('login-form').addEventListener('submit', onLogin);
    $('logout').addEventListener('click', signOut);
    const token = storedToken();
    if (!token) {
      showLogin('');
      return;
    }
    // A token from earlier in this tab: show the page at once, and the
    // sign-in form again should the node refuse it.
    app.token = token;
    showApp();
    startPolling();
    tick();
  });
})();

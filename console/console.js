/*
 * kvcascade web console: renders the cluster snapshots that /console/events streams (server-sent
 * events, one about every second) into the tables of index.html, and draws each node's ops/s and
 * p99 charts on small canvases. Plain browser JavaScript, no dependency.
 *
 * Safety: every value from the server (pool, extension and error strings are user data) is put
 * in the page with textContent or as an attribute value through the DOM, never parsed as HTML.
 */
'use strict';

(function () {
  /** Seconds without an update before the page says it is stale. */
  var STALE_MS = 5000;
  var lastAt = 0;
  var lastReceived = 0;
  var source = null;

  /** Creates an element; `attrs` sets attributes (class, data-*, title...), `children` are nodes or strings (as text). */
  function h(tag, attrs, children) {
    var el = document.createElement(tag);
    if (attrs) {
      for (var k in attrs) {
        if (Object.prototype.hasOwnProperty.call(attrs, k) && attrs[k] !== undefined && attrs[k] !== null) el.setAttribute(k, String(attrs[k]));
      }
    }
    (children || []).forEach(function (c) {
      if (c === undefined || c === null) return;
      el.appendChild(typeof c === 'object' ? c : document.createTextNode(String(c)));
    });
    return el;
  }

  function text(id, value) {
    document.getElementById(id).textContent = value;
  }

  function fill(tbody, rows) {
    var body = typeof tbody === 'string' ? document.querySelector(tbody) : tbody;
    body.replaceChildren.apply(body, rows);
  }

  function poolName(name) {
    return name === '' ? '(default)' : name;
  }

  function fmtNum(n) {
    if (n === undefined || n === null) return '–';
    if (n >= 1e6) return (n / 1e6).toFixed(1) + 'M';
    if (n >= 1e4) return (n / 1e3).toFixed(1) + 'k';
    return String(Math.round(n * 10) / 10);
  }

  function fmtMs(ms) {
    if (ms === undefined || ms === null) return '–';
    if (ms >= 1000) return (ms / 1000).toFixed(2) + ' s';
    if (ms >= 10) return Math.round(ms) + ' ms';
    return (Math.round(ms * 10) / 10) + ' ms';
  }

  function fmtBytes(b) {
    if (!b) return '–';
    if (b >= 1 << 30) return (b / (1 << 30)).toFixed(1) + ' GiB';
    return Math.round(b / (1 << 20)) + ' MiB';
  }

  function fmtDuration(s) {
    if (s === undefined || s === null) return '–';
    if (s < 120) return Math.round(s) + ' s';
    if (s < 7200) return Math.round(s / 60) + ' min';
    if (s < 172800) return (s / 3600).toFixed(1) + ' h';
    return Math.round(s / 86400) + ' d';
  }

  /** A small line chart of `values` (nulls are gaps) on a canvas. */
  function spark(values, label, kind) {
    var w = 120;
    var hgt = 28;
    var ratio = window.devicePixelRatio || 1;
    var c = h('canvas', { width: w * ratio, height: hgt * ratio, class: 'spark spark-' + kind, role: 'img', 'aria-label': label });
    c.style.width = w + 'px';
    c.style.height = hgt + 'px';
    var ctx = c.getContext('2d');
    if (!ctx) return c;
    ctx.scale(ratio, ratio);
    var max = 0;
    values.forEach(function (v) {
      if (v !== null && v > max) max = v;
    });
    ctx.strokeStyle = kind === 'p99' ? '#c2410c' : '#2563eb';
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    var n = 60;
    var started = false;
    var offset = n - values.length;
    values.forEach(function (v, i) {
      if (v === null) {
        started = false;
        return;
      }
      var x = ((offset + i) / (n - 1)) * (w - 2) + 1;
      var y = hgt - 2 - (max > 0 ? (v / max) * (hgt - 4) : 0);
      if (started) ctx.lineTo(x, y);
      else ctx.moveTo(x, y);
      started = true;
    });
    ctx.stroke();
    // A point with no neighbour draws no line: mark it.
    ctx.fillStyle = ctx.strokeStyle;
    values.forEach(function (v, i) {
      var alone = v !== null && (i === 0 || values[i - 1] === null) && (i === values.length - 1 || values[i + 1] === null);
      if (!alone) return;
      var x = ((offset + i) / (n - 1)) * (w - 2) + 1;
      var y = hgt - 2 - (max > 0 ? (v / max) * (hgt - 4) : 0);
      ctx.fillRect(x - 1.5, y - 1.5, 3, 3);
    });
    return c;
  }

  function renderNodes(s) {
    fill(
      '#nodes tbody',
      s.nodes.map(function (n) {
        var last = n.history.length > 0 ? n.history[n.history.length - 1] : null;
        var state = n.up ? 'up' : 'down';
        return h('tr', { 'data-node': n.id, 'data-up': String(n.up), class: n.up ? '' : 'row-down' }, [
          h('td', null, ['n' + n.id, n.self ? h('span', { class: 'muted', title: 'serves this page' }, [' (this)']) : null]),
          h('td', { class: 'mono' }, [n.address]),
          h('td', null, [
            h('span', { class: 'pill ' + (n.up ? 'pill-up' : 'pill-down'), title: n.error || '' }, [state]),
            n.memberState !== 'active' ? h('span', { class: 'muted' }, [' ' + n.memberState]) : null,
            !n.up && n.error ? h('div', { class: 'err' }, [n.error]) : null,
          ]),
          h('td', null, [n.version || '–']),
          h('td', { class: 'num' }, [n.up ? n.leads : '–']),
          h('td', { class: 'num' }, [n.up ? n.replicas : '–']),
          h('td', { class: 'num' }, [last ? fmtNum(last.ops) : '–']),
          h('td', null, [spark(n.history.map(function (p) { return p.ops; }), 'ops per second of node ' + n.id, 'ops')]),
          h('td', { class: 'num' }, [last ? fmtMs(last.p99Ms) : '–']),
          h('td', null, [spark(n.history.map(function (p) { return p.p99Ms; }), 'p99 latency of node ' + n.id, 'p99')]),
          h('td', { class: 'num' }, [fmtBytes(n.rssBytes)]),
          h('td', { class: 'num' }, [fmtDuration(n.uptimeSeconds)]),
        ]);
      }),
    );
  }

  function renderPools(s) {
    fill(
      '#pools tbody',
      s.pools.map(function (p) {
        return h('tr', { 'data-pool': p.name }, [
          h('td', { class: 'mono' }, [poolName(p.name)]),
          h('td', { class: 'num' }, [p.shards]),
          h('td', { class: 'num' }, [p.replicas]),
          h('td', null, [p.state]),
          h('td', { class: 'num' }, [fmtNum(p.keys)]),
          h('td', { class: 'num' + (p.leaderless > 0 ? ' bad' : '') }, [p.leaderless]),
          h('td', { class: 'mono' }, [p.affinity || '']),
        ]);
      }),
    );
  }

  var ROLE_MARK = { leader: 'L', follower: 'F', learner: 'l', candidate: 'C', precandidate: 'C', down: '✕', absent: '·' };

  function renderShards(s) {
    var nodes = s.nodes.map(function (n) { return n.id; });
    var head = h('tr', null, [h('th', null, ['shard']), h('th', null, ['pool']), h('th', null, ['leader']), h('th', null, ['term']), h('th', null, ['voters']), h('th', null, ['learners']), h('th', null, ['keys'])].concat(
      nodes.map(function (id) { return h('th', { class: 'cell-head' }, ['n' + id]); }),
    ));
    fill('#shards thead', [head]);
    fill(
      '#shards tbody',
      s.shards.map(function (g) {
        var isMeta = g.pool === undefined;
        var leaderText = g.leader ? 'n' + g.leader + (g.leaderDown ? ' (down)' : '') : 'none';
        var cells = nodes.map(function (id) {
          var r = null;
          g.replicas.forEach(function (x) { if (x.node === id) r = x; });
          if (!r) return h('td', { class: 'cell cell-none' }, ['']);
          var lag = r.lag !== undefined && r.role !== 'leader' ? String(r.lag) : '';
          return h('td', { class: 'cell role-' + r.role, title: 'node ' + id + ': ' + r.role + (r.lag !== undefined ? ', ' + r.lag + ' entries behind' : ''), 'data-role': r.role }, [
            h('b', null, [ROLE_MARK[r.role] || '?']),
            lag ? h('small', null, [' ' + lag]) : null,
          ]);
        });
        return h('tr', { 'data-group': g.group, 'data-leader': g.leader, 'data-leader-down': String(g.leaderDown) }, [
          h('td', null, [isMeta ? 'meta' : String(g.group)]),
          h('td', { class: 'mono' }, [isMeta ? 'cluster map' : poolName(g.pool) + ' #' + g.index]),
          h('td', { class: 'leader' + (g.leader === 0 || g.leaderDown ? ' bad' : '') }, [leaderText]),
          h('td', { class: 'num' }, [g.term]),
          h('td', null, [g.voters.map(function (v) { return 'n' + v; }).join(' ')]),
          h('td', null, [g.learners.length ? g.learners.map(function (v) { return 'n' + v; }).join(' ') : '–']),
          h('td', { class: 'num' }, [isMeta ? '–' : fmtNum(g.keys)]),
        ].concat(cells));
      }),
    );
  }

  function renderExtensions(s) {
    var rows = [];
    s.extensions.forEach(function (e) {
      e.nodes.forEach(function (n, i) {
        var bad = n.state === 'failed' || n.state === 'paused';
        rows.push(
          h('tr', { 'data-extension': e.name, 'data-node': n.node }, [
            i === 0 ? h('td', { rowspan: e.nodes.length, class: 'mono ext-name' }, [e.name + ' ', h('span', { class: 'muted' }, [e.version + ' g' + e.generation])]) : null,
            h('td', null, ['n' + n.node]),
            h('td', { class: bad ? 'bad' : n.state === 'running' ? 'good' : '' }, [n.state]),
            h('td', null, [n.runsIn || '–']),
            h('td', null, [n.delivering ? 'yes' : 'no']),
            h('td', { class: 'num' }, [fmtNum(n.invocations)]),
            h('td', { class: 'num' + (n.errors > 0 ? ' bad' : '') }, [fmtNum(n.errors)]),
            h('td', { class: 'num' + (n.timeouts > 0 ? ' bad' : '') }, [fmtNum(n.timeouts)]),
            h('td', { class: 'num' }, [n.invocations > 0 ? fmtMs(n.lastLatencyMs) : '–']),
            h('td', { class: 'num' + (n.backlog > 0 ? ' warn' : '') }, [fmtNum(n.backlog)]),
            h('td', { class: 'num' + (n.deadLettered > 0 ? ' bad' : '') }, [fmtNum(n.deadLettered)]),
            h('td', { class: 'num' }, [fmtNum(n.workerRestarts)]),
            h('td', { class: 'mono' }, [n.prefixes.join(' ')]),
            h('td', { class: 'err' }, [n.error]),
          ]),
        );
      });
    });
    fill('#extensions tbody', rows);
    document.getElementById('no-extensions').hidden = s.extensions.length > 0;
  }

  function render(s) {
    lastAt = s.at;
    lastReceived = Date.now();
    text('served-by', 'served by node ' + s.servedBy);
    text('epoch', 'map epoch ' + s.mapEpoch);
    renderNodes(s);
    renderPools(s);
    renderShards(s);
    renderExtensions(s);
    document.body.setAttribute('data-updated', String(s.at));
    tick();
  }

  function setConn(state, label) {
    var el = document.getElementById('conn');
    el.className = 'pill pill-' + state;
    el.textContent = label;
  }

  /** Updates the "updated … ago" line and flags a stale page. */
  function tick() {
    if (!lastAt) return;
    var age = Date.now() - lastReceived;
    text('updated', 'updated ' + new Date(lastAt).toLocaleTimeString());
    if (age > STALE_MS) setConn('down', 'stale (' + Math.round(age / 1000) + ' s)');
  }

  function connect() {
    // With access control on, the page is opened as /?token=<root token>: the stream needs it too.
    var token = new URLSearchParams(window.location.search).get('token');
    source = new EventSource('/console/events' + (token ? '?token=' + encodeURIComponent(token) : ''));
    source.addEventListener('open', function () {
      setConn('up', 'live');
    });
    source.addEventListener('snapshot', function (ev) {
      setConn('up', 'live');
      render(JSON.parse(ev.data));
    });
    source.addEventListener('failure', function (ev) {
      setConn('down', 'gathering failed');
      try {
        text('updated', JSON.parse(ev.data).message);
      } catch (e) {
        /* keep the last line */
      }
    });
    source.addEventListener('error', function () {
      if (source.readyState === EventSource.CLOSED) {
        // Refused (503: too many viewers, 403) or the node is gone: try again a little later.
        setConn('down', 'disconnected: retrying');
        source.close();
        setTimeout(connect, 5000);
      } else {
        setConn('wait', 'reconnecting');
      }
    });
  }

  setInterval(tick, 1000);
  connect();
})();

// eventgate console: plain JavaScript, no build step, nothing loaded from elsewhere.
// Every page reads the admin API (/api/..., described at /api/openapi.json) with the admin
// token the operator typed in, kept in this tab's sessionStorage only.
"use strict";

(function () {
  const TOKEN_KEY = "eventgate-admin-token";
  const MAX_EVENTS = 500;
  const main = document.getElementById("main");
  let cleanup = null;

  // -- helpers ---------------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    for (const child of children.flat()) if (child) node.append(child);
    return node;
  }

  function fmt(n) {
    if (n === null || n === undefined) return "–";
    return Number(n).toLocaleString("en-US");
  }

  function seconds(s) {
    if (s === null || s === undefined) return "–";
    if (!isFinite(s)) return "> 1 h";
    if (s < 1) return `${Math.round(s * 1000)} ms`;
    if (s < 120) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
    if (s < 7200) return `${Math.round(s / 60)} min`;
    return `${(s / 3600).toFixed(1)} h`;
  }

  function when(value) {
    if (value === null || value === undefined) return "–";
    const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
    return isNaN(date) ? String(value) : date.toLocaleString();
  }

  function clock(value) {
    const date = new Date(value);
    return isNaN(date) ? String(value || "") : date.toLocaleTimeString();
  }

  function token() { return sessionStorage.getItem(TOKEN_KEY); }

  class Unauthorized extends Error {}

  async function api(path, options) {
    const opts = Object.assign({ headers: {} }, options || {});
    opts.headers = Object.assign({ Authorization: `Bearer ${token()}` }, opts.headers);
    if (opts.json !== undefined) {
      opts.body = JSON.stringify(opts.json);
      opts.headers["Content-Type"] = "application/json";
      delete opts.json;
    }
    const response = await fetch(path, opts);
    if (response.status === 401) throw new Unauthorized("the admin token was refused");
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = new Error(body.message || `HTTP ${response.status}`);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  function failure(error) {
    if (error instanceof Unauthorized) {
      sessionStorage.removeItem(TOKEN_KEY);
      route();
      return el("p", { class: "error" }, "Signed out: the admin token was refused.");
    }
    if (error.status === 404 && !token()) return el("p", { class: "error" }, "Not found.");
    return el("p", { class: "error", "data-testid": "error" }, `Could not load: ${error.message}`);
  }

  // Pretty JSON as DOM (safe: text nodes only), keys and value kinds coloured.
  function jsonView(value) {
    const pre = el("pre", { class: "json" });
    const text = JSON.stringify(value, null, 2) || "";
    const pattern = /("(?:\\.|[^"\\])*")(\s*:)?|\b(true|false|null)\b|(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)/g;
    let last = 0;
    for (const match of text.matchAll(pattern)) {
      pre.append(text.slice(last, match.index));
      const kind = match[1] ? (match[2] ? "k" : "s") : match[3] ? "b" : "n";
      pre.append(el("span", { class: kind }, match[1] || match[3] || match[4]));
      if (match[2]) pre.append(match[2]);
      last = match.index + match[0].length;
    }
    pre.append(text.slice(last));
    return pre;
  }

  function rawOrText(value) {
    if (value === null || value === undefined) return el("pre", {}, "(nothing)");
    if (typeof value !== "string") return el("pre", {}, JSON.stringify(value, null, 2));
    try { return el("pre", {}, JSON.stringify(JSON.parse(value), null, 2)); } catch (_) { return el("pre", {}, value); }
  }

  // A bar chart as inline SVG: one or two stacked series, optionally a line on its own scale.
  function barChart(start, bucketS, a, b, line, label) {
    const width = 1200, height = 170, pad = 22;
    const n = a.length;
    const totals = a.map((v, i) => v + (b ? b[i] || 0 : 0));
    const top = Math.max(1, ...totals);
    const bw = (width - pad) / n;
    const chart = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label });
    chart.append(svg("line", { class: "axis", x1: pad, y1: height - pad, x2: width, y2: height - pad }));
    chart.append(svg("text", { x: 0, y: 10 }, document.createTextNode(fmt(top))));
    for (let i = 0; i < n; i++) {
      const x = pad + i * bw;
      const ha = (a[i] / top) * (height - pad - 12);
      const hb = b ? ((b[i] || 0) / top) * (height - pad - 12) : 0;
      const at = new Date((start + i * bucketS) * 1000).toLocaleString();
      const tip = svg("title", {}, document.createTextNode(`${at}: ${fmt(a[i])}${b ? ` / ${fmt(b[i])}` : ""}`));
      const group = svg("g", {}, tip);
      if (ha > 0) group.append(svg("rect", { class: "bar-a", x: x + 0.5, y: height - pad - ha, width: Math.max(bw - 1, 1), height: ha }));
      if (hb > 0) group.append(svg("rect", { class: "bar-b", x: x + 0.5, y: height - pad - ha - hb, width: Math.max(bw - 1, 1), height: hb }));
      group.append(svg("rect", { x, y: 0, width: bw, height: height - pad, fill: "transparent" }));
      chart.append(group);
    }
    if (line) {
      const finite = line.filter((v) => v !== null && isFinite(v));
      const lineTop = Math.max(0.001, ...finite);
      const points = line.map((v, i) => (v === null ? null : `${pad + (i + 0.5) * bw},${height - pad - (Math.min(isFinite(v) ? v : lineTop, lineTop) / lineTop) * (height - pad - 12)}`)).filter(Boolean);
      if (points.length) chart.append(svg("polyline", { class: "line", points: points.join(" ") }));
    }
    const short = (t) => new Date(t * 1000).toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
    chart.append(svg("text", { x: pad, y: height - 6 }, document.createTextNode(short(start))));
    chart.append(svg("text", { x: width - 4, y: height - 6, "text-anchor": "end" }, document.createTextNode(short(start + n * bucketS))));
    return chart;
  }

  function legend(...items) {
    return el("div", { class: "legend" }, items.map(([cls, text]) => el("span", {}, el("span", { class: `swatch ${cls}` }), text)));
  }

  function card(label, value, testid) {
    return el("div", { class: "card" }, el("div", { class: "label" }, label), el("div", { class: "value", "data-testid": testid }, value));
  }

  function table(headers, rows, empty) {
    if (!rows.length) return el("p", { class: "empty" }, empty || "Nothing yet.");
    return el("table", {}, el("thead", {}, el("tr", {}, headers.map((h) => el("th", { class: h.endsWith("#") ? "num" : "" }, h.replace(/#$/, ""))))), el("tbody", {}, rows));
  }

  function every(ms, fn) {
    let stopped = false;
    let timer = null;
    const tick = async () => {
      if (stopped) return;
      try { await fn(); } catch (error) {
        if (error instanceof Unauthorized) { failure(error); return; }
        console.warn(error.message);
      }
      if (!stopped) timer = setTimeout(tick, ms);
    };
    tick();
    return () => { stopped = true; clearTimeout(timer); };
  }

  // -- sign in ---------------------------------------------------------------------------------

  function loginPage(message) {
    const input = el("input", { type: "password", id: "token", autocomplete: "current-password", placeholder: "server.admin_token", "data-testid": "token" });
    const note = el("p", { class: "error" }, message || "");
    const form = el("form", {
      class: "panel login",
      onsubmit: async (event) => {
        event.preventDefault();
        sessionStorage.setItem(TOKEN_KEY, input.value.trim());
        try {
          await api("/api/sources");
          if (!location.hash || location.hash === "#/login") location.hash = "#/overview";
          route();
        } catch (error) {
          sessionStorage.removeItem(TOKEN_KEY);
          note.textContent = error instanceof Unauthorized ? "That token was refused." : error.status === 404 ? "The admin API is off: set server.admin_token in the config." : error.message;
        }
      },
    }, el("h1", {}, "Sign in"), el("label", { for: "token" }, "Admin token"), input, el("button", { type: "submit", "data-testid": "sign-in" }, "Sign in"), note);
    main.replaceChildren(form);
    input.focus();
  }

  // -- overview ----------------------------------------------------------------------------------

  async function overviewPage(params) {
    const sources = (await api("/api/sources")).sources;
    const chosen = params.get("source") || "";
    const select = el("select", { onchange: () => { location.hash = `#/overview${select.value ? `?source=${encodeURIComponent(select.value)}` : ""}`; } },
      el("option", { value: "" }, "All sources"), sources.map((s) => el("option", { value: s.name, selected: s.name === chosen }, s.name)));
    const body = el("div", {});
    let span = "24h";
    main.replaceChildren(el("div", { class: "row spread" }, el("h1", {}, "Overview"), el("label", {}, "Source ", select)), body);
    let data = null;
    const draw = () => {
      if (!data) return;
      const v = data.volume[span];
      const spanTabs = el("div", { class: "tabs" }, ["24h", "7d"].map((s) => el("button", { type: "button", class: s === span ? "on" : "", onclick: () => { span = s; draw(); } }, s === "24h" ? "24 hours" : "7 days")));
      const health = data.destinations.map((d) => el("tr", {},
        el("td", {}, el("a", { href: `#/destinations/${encodeURIComponent(d.name)}` }, d.name), " ", el("span", { class: "muted" }, d.type)),
        el("td", {}, !d.enabled ? el("span", { class: "badge" }, "disabled") : d.circuitOpen ? el("span", { class: "badge bad" }, "circuit open") : el("span", { class: "badge ok" }, "healthy")),
        el("td", { class: "num" }, fmt(d.windows["1h"].delivered)),
        el("td", { class: "num" }, fmt(d.windows["1h"].notDelivered)),
        el("td", { class: "num" }, seconds(d.windows["1h"].p95LatencyS)),
        el("td", { class: "num" }, fmt(d.queueDepth)),
        el("td", { class: "num" }, d.deadLetters ? el("a", { href: `#/dead-letters?destination=${encodeURIComponent(d.name)}` }, fmt(d.deadLetters)) : "0")));
      const top = data.topEvents[span].map((t) => el("tr", {}, el("td", {}, el("span", { class: `badge ${t.type}` }, t.type)), el("td", {}, t.event || el("span", { class: "muted" }, "–")), el("td", {}, t.source), el("td", { class: "num" }, fmt(t.count))));
      const errors = data.recentErrors.map((e) => el("tr", {}, el("td", {}, when(e.at)), el("td", {}, e.source || el("span", { class: "muted" }, "unknown")), el("td", {}, el("code", {}, e.code)), el("td", { class: "num" }, e.status), el("td", {}, e.message)));
      body.replaceChildren(
        el("div", { class: "cards" },
          card("Events, 24 h", fmt(data.totals["24h"].received), "events-24h"),
          card("Events, 7 d", fmt(data.totals["7d"].received), "events-7d"),
          card("Refused, 24 h", fmt(data.totals["24h"].rejected), "rejected-24h"),
          card("Unique users, 24 h", fmt(data.uniqueUsers["24h"]), "users-24h"),
          card("Unique users, 7 d", fmt(data.uniqueUsers["7d"]), "users-7d")),
        el("div", { class: "panel" }, el("div", { class: "row spread" }, el("h2", {}, "Event volume"), spanTabs),
          barChart(v.start, v.bucketS, v.received, v.rejected, null, "event volume"), legend(["a", "accepted"], ["b", "refused"])),
        el("div", { class: "panel" }, el("h2", {}, "Pipeline health (last hour)"),
          table(["Destination", "State", "Delivered#", "Not delivered#", "p95 latency#", "Queue#", "Dead letters#"], health, "No destinations configured.")),
        el("div", { class: "row panels" },
          el("div", { class: "panel grow" }, el("h2", {}, `Top events (${span === "24h" ? "24 hours" : "7 days"})`), table(["Type", "Event", "Source", "Count#"], top, "No events yet.")),
          el("div", { class: "panel grow" }, el("h2", {}, "Recent ingestion errors"), table(["When", "Source", "Code", "Status#", "Message"], errors, "No refused events or requests."))));
    };
    return every(10000, async () => {
      data = await api(`/api/overview${chosen ? `?source=${encodeURIComponent(chosen)}` : ""}`);
      draw();
    });
  }

  // -- debugger ----------------------------------------------------------------------------------

  async function debuggerPage(source) {
    const sources = (await api("/api/sources")).sources;
    if (!source) {
      if (sources.length) location.hash = `#/debugger/${encodeURIComponent(sources[0].name)}`;
      else main.replaceChildren(el("p", { class: "empty" }, "No sources configured."));
      return null;
    }
    const events = [];          // newest first, at most MAX_EVENTS
    const held = [];            // arrived while paused
    let paused = false, view = "pretty", selected = null, query = "";
    const select = el("select", { "data-testid": "source", onchange: () => { location.hash = `#/debugger/${encodeURIComponent(select.value)}`; } },
      sources.map((s) => el("option", { value: s.name, selected: s.name === source }, s.name)));
    const status = el("span", { class: "muted", "data-testid": "stream-status" }, "connecting…");
    const count = el("span", { class: "muted", "data-testid": "count" }, "");
    const pause = el("button", { type: "button", "data-testid": "pause", onclick: () => togglePause() }, "Pause");
    const search = el("input", { type: "search", placeholder: "Search events (text in the JSON)", "data-testid": "search", oninput: () => { query = search.value.toLowerCase(); applyFilter(); } });
    const viewTabs = el("div", { class: "tabs" }, ["pretty", "raw"].map((v) => el("button", { type: "button", "data-view": v, class: v === view ? "on" : "", onclick: () => { view = v; viewTabs.querySelectorAll("button").forEach((b) => b.classList.toggle("on", b.dataset.view === view)); showDetail(); } }, v === "pretty" ? "Pretty" : "Raw")));
    const tbody = el("tbody", { "data-testid": "events" });
    const list = el("div", { class: "list" }, el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "Received"), el("th", {}, "Type"), el("th", {}, "Event"), el("th", {}, "User"))), tbody));
    const detail = el("div", { class: "detail", "data-testid": "detail" }, el("p", { class: "empty" }, "Select an event to see its JSON."));
    main.replaceChildren(
      el("div", { class: "row spread" }, el("h1", {}, "Debugger"), el("label", {}, "Source ", select)),
      el("div", { class: "toolbar" }, pause, search, viewTabs, count, el("span", { class: "grow" }), status),
      el("div", { class: "debugger" }, list, detail));

    function rowFor(item) {
      const tr = el("tr", { class: "clickable", "data-id": item.id, onclick: () => { selected = item; tbody.querySelectorAll("tr.selected").forEach((r) => r.classList.remove("selected")); tr.classList.add("selected"); showDetail(); } },
        el("td", {}, clock(item.receivedAt)), el("td", {}, el("span", { class: `badge ${item.type}` }, item.type)),
        el("td", { title: item.event || "" }, item.event || el("span", { class: "muted" }, "–")), el("td", { title: item.userId || item.anonymousId || "" }, item.userId || item.anonymousId || ""));
      item.row = tr;
      item.text = JSON.stringify(item.message).toLowerCase();
      tr.hidden = query !== "" && !item.text.includes(query);
      return tr;
    }
    function applyFilter() { for (const item of events) item.row.hidden = query !== "" && !item.text.includes(query); updateCount(); }
    function updateCount() {
      const shown = query ? events.filter((e) => !e.row.hidden).length : events.length;
      count.textContent = `${fmt(shown)} of the last ${fmt(events.length)} events${held.length ? ` · ${fmt(held.length)} new while paused` : ""}`;
    }
    function add(batch) {
      // batch: oldest first; shown newest first.
      const fresh = batch.slice(-MAX_EVENTS).reverse();
      const rows = document.createDocumentFragment();
      for (const item of fresh) rows.append(rowFor(item));
      tbody.prepend(rows);
      events.unshift(...fresh);
      while (events.length > MAX_EVENTS) { const gone = events.pop(); gone.row.remove(); }
      updateCount();
    }
    function togglePause() {
      paused = !paused;
      pause.textContent = paused ? "Resume" : "Pause";
      if (!paused && held.length) add(held.splice(0));
      updateCount();
    }
    function showDetail() {
      if (!selected) return;
      const m = selected.message;
      detail.replaceChildren(el("div", { class: "row spread" }, el("strong", {}, `${m.type}${selected.event ? ` · ${selected.event}` : ""}`), el("code", {}, m.messageId)),
        view === "pretty" ? jsonView(m) : el("pre", { class: "json", "data-testid": "raw" }, JSON.stringify(m)));
    }

    const controller = new AbortController();
    let lastId = null;
    async function connect() {
      while (!controller.signal.aborted) {
        try {
          const headers = { Authorization: `Bearer ${token()}` };
          if (lastId) headers["Last-Event-ID"] = lastId;
          const response = await fetch(`/api/sources/${encodeURIComponent(source)}/stream`, { headers, signal: controller.signal });
          if (response.status === 401) { sessionStorage.removeItem(TOKEN_KEY); route(); return; }
          if (!response.ok) throw new Error(`HTTP ${response.status}`);
          status.textContent = "live";
          status.className = "good";
          const reader = response.body.getReader();
          const decoder = new TextDecoder();
          let buffer = "";
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buffer += decoder.decode(value, { stream: true });
            let cut;
            while ((cut = buffer.indexOf("\n\n")) >= 0) {
              const block = buffer.slice(0, cut);
              buffer = buffer.slice(cut + 2);
              let kind = "message", data = "";
              for (const line of block.split("\n")) {
                if (line.startsWith("id: ")) lastId = line.slice(4);
                else if (line.startsWith("event: ")) kind = line.slice(7);
                else if (line.startsWith("data: ")) data += line.slice(6);
              }
              if (!data) continue;
              const batch = JSON.parse(data);
              if (kind === "snapshot" || !paused) add(batch);
              else { held.push(...batch); held.splice(0, Math.max(0, held.length - MAX_EVENTS)); updateCount(); }
            }
          }
        } catch (error) {
          if (controller.signal.aborted) return;
          console.warn("debugger stream:", error.message);
        }
        if (controller.signal.aborted) return;
        status.textContent = "reconnecting…";
        status.className = "warn";
        await new Promise((resolve) => setTimeout(resolve, 1000));
      }
    }
    connect();
    updateCount();
    return () => controller.abort();
  }

  // -- event delivery ----------------------------------------------------------------------------

  async function destinationsPage() {
    const body = el("div", {});
    main.replaceChildren(el("h1", {}, "Event delivery"), body);
    return every(10000, async () => {
      const rows = (await api("/api/destinations")).destinations.map((d) => el("tr", {},
        el("td", {}, el("a", { href: `#/destinations/${encodeURIComponent(d.name)}` }, d.name)),
        el("td", {}, d.type),
        el("td", {}, !d.enabled ? el("span", { class: "badge" }, "disabled") : d.circuitOpen ? el("span", { class: "badge bad" }, "circuit open") : el("span", { class: "badge ok" }, "healthy")),
        el("td", { class: "num" }, fmt(d.windows["24h"].delivered)),
        el("td", { class: "num" }, fmt(d.windows["24h"].notDelivered)),
        el("td", { class: "num" }, seconds(d.windows["24h"].p95LatencyS)),
        el("td", { class: "num" }, fmt(d.queueDepth)),
        el("td", { class: "num" }, fmt(d.deadLetters))));
      body.replaceChildren(el("div", { class: "panel" }, table(["Destination", "Type", "State", "Delivered, 24 h#", "Not delivered, 24 h#", "p95, 24 h#", "Queue#", "Dead letters#"], rows, "No destinations configured.")));
    });
  }

  async function deliveryPage(name) {
    const config = await api(`/api/destinations/${encodeURIComponent(name)}`);
    const body = el("div", {});
    let span = "1h";
    let data = null;
    main.replaceChildren(el("div", { class: "row spread" }, el("h1", {}, `Event delivery · ${name}`), el("a", { href: `#/dead-letters?destination=${encodeURIComponent(name)}` }, "Dead letters →")), body);
    const draw = () => {
      const w = data.windows, h = data.health, t = data.trends[span];
      const spanTabs = el("div", { class: "tabs" }, ["1h", "24h"].map((s) => el("button", { type: "button", class: s === span ? "on" : "", onclick: () => { span = s; draw(); } }, s === "1h" ? "Last hour" : "24 hours")));
      const samples = data.errorSamples.map((s) => el("div", { class: "sample" },
        el("div", { class: "row" }, el("span", { class: "badge bad" }, s.reason), el("span", { class: "muted" }, when(s.at)), el("code", {}, s.messageId)),
        el("div", { class: "exchange" },
          el("div", {}, el("strong", {}, "You sent"), rawOrText(s.youSent)),
          el("div", {}, el("strong", {}, "Request to destination"), rawOrText(s.requestToDestination)),
          el("div", {}, el("strong", {}, "Response from destination"), rawOrText(s.responseFromDestination)))));
      body.replaceChildren(
        el("div", { class: "cards" },
          card("Delivered, 1 h", fmt(w["1h"].delivered), "delivered-1h"),
          card("Not delivered, 1 h", fmt(w["1h"].notDelivered), "not-delivered-1h"),
          card("Failed attempts, 1 h", fmt(w["1h"].failedAttempts), "failed-1h"),
          card("p95 end-to-end, 1 h", seconds(w["1h"].p95LatencyS), "p95-1h"),
          card("Delivered, 24 h", fmt(w["24h"].delivered), "delivered-24h"),
          card("Not delivered, 24 h", fmt(w["24h"].notDelivered), "not-delivered-24h")),
        el("div", { class: "panel" }, el("div", { class: "row spread" }, el("h2", {}, "Trend"), spanTabs),
          barChart(t.start, t.bucketS, t.delivered, t.notDelivered, t.p95LatencyS, "deliveries"),
          legend(["a", "delivered"], ["b", "not delivered"], ["c", "p95 latency (own scale)"])),
        el("div", { class: "panel" }, el("h2", {}, "Health"), el("div", { class: "row" },
          el("span", {}, "Circuit: ", h.circuitOpen ? el("span", { class: "badge bad" }, "open: deliveries paused") : el("span", { class: "badge ok" }, "closed")),
          el("span", {}, `Queue: ${fmt(h.queueDepth)}`), el("span", {}, `Oldest pending: ${seconds(h.oldestPendingAgeS)}`),
          el("span", {}, `In flight: ${fmt(h.inFlight)}`), el("span", {}, `Dead letters: ${fmt(h.deadLetters)}`))),
        el("div", { class: "panel", "data-testid": "error-samples" }, el("h2", {}, "Recent errors"), samples.length ? samples : el("p", { class: "empty" }, "No delivery errors.")),
        el("details", { class: "panel" }, el("summary", {}, "Effective configuration (secrets redacted)"), jsonView(config.config)));
    };
    return every(5000, async () => {
      data = await api(`/api/destinations/${encodeURIComponent(name)}/delivery`);
      draw();
    });
  }

  // -- dead letters ------------------------------------------------------------------------------

  async function deadLettersPage(params) {
    const destinations = (await api("/api/destinations")).destinations;
    const chosen = params.get("destination") || "";
    const select = el("select", { "data-testid": "dl-destination", onchange: () => { location.hash = `#/dead-letters${select.value ? `?destination=${encodeURIComponent(select.value)}` : ""}`; } },
      el("option", { value: "" }, "All destinations"), destinations.map((d) => el("option", { value: d.name, selected: d.name === chosen }, d.name)));
    const note = el("span", { class: "muted", "data-testid": "dl-note" });
    const filter = chosen ? { destination: chosen } : { all: true };
    const replayAll = el("button", { type: "button", onclick: async () => {
      if (!confirm(`Replay every dead letter${chosen ? ` of ${chosen}` : ""}?`)) return;
      const result = await api("/api/dead-letters/replay", { method: "POST", json: filter });
      note.textContent = `${fmt(result.replayed)} replayed.`;
      load();
    } }, "Replay all");
    const purgeAll = el("button", { type: "button", class: "danger", onclick: async () => {
      if (!confirm(`Delete every dead letter${chosen ? ` of ${chosen}` : ""} for good?`)) return;
      const result = await api("/api/dead-letters/purge", { method: "POST", json: filter });
      note.textContent = `${fmt(result.purged)} purged.`;
      load();
    } }, "Purge all");
    const body = el("div", { class: "panel" });
    const followed = new Map();  // key -> row of letters being replayed, kept after they leave the list
    main.replaceChildren(el("div", { class: "row spread" }, el("h1", {}, "Dead letters"), el("div", { class: "row" }, el("label", {}, "Destination ", select), replayAll, purgeAll)), note, body);

    async function follow(letter, cell) {
      for (let i = 0; i < 600; i++) {
        const state = (await api(`/api/destinations/${encodeURIComponent(letter.destination)}/events/${letter.ref}`)).state;
        const label = { done: "delivered", retrying: "replaying…", pending: "replaying…", dead_lettered: "dead-lettered again" }[state] || state;
        cell.replaceChildren(el("span", { class: `badge ${state === "done" ? "ok" : state === "dead_lettered" ? "bad" : "warn"}`, "data-testid": "replay-state" }, label));
        if (state === "done" || state === "dead_lettered") return;
        await new Promise((resolve) => setTimeout(resolve, 1000));
      }
    }

    function rowFor(letter) {
      const state = el("span", {});
      const details = el("tr", { hidden: true }, el("td", { colspan: 7 }));
      const show = el("button", { type: "button", class: "quiet", onclick: async () => {
        details.hidden = !details.hidden;
        if (details.hidden) return;
        const full = await api(`/api/dead-letters/${encodeURIComponent(letter.key)}`);
        details.firstChild.replaceChildren(el("div", { class: "exchange" },
          el("div", {}, el("strong", {}, "You sent"), jsonView(full.event)),
          el("div", {}, el("strong", {}, "Request to destination"), rawOrText(full.request)),
          el("div", {}, el("strong", {}, "Response from destination"), rawOrText(full.response))));
      } }, "Details");
      const replay = el("button", { type: "button", "data-testid": "replay", onclick: async () => {
        replay.disabled = true;
        try {
          const result = await api(`/api/dead-letters/${encodeURIComponent(letter.key)}/replay`, { method: "POST" });
          followed.set(letter.key, [row, details]);
          await follow({ destination: result.destination, ref: result.event }, state);
        } catch (error) {
          state.replaceChildren(failure(error));
        }
      } }, "Replay");
      const row = el("tr", { "data-key": letter.key },
        el("td", {}, when(letter.lastAttemptAt)), el("td", {}, letter.destination), el("td", {}, letter.source),
        el("td", {}, el("code", {}, letter.messageId)), el("td", {}, letter.reason), el("td", { class: "num" }, fmt(letter.attempts)),
        el("td", {}, el("div", { class: "row" }, show, replay, state)));
      return [row, details];
    }

    async function load() {
      const query = chosen ? `?destination=${encodeURIComponent(chosen)}` : "";
      const letters = (await api(`/api/dead-letters${query}`)).deadLetters;
      const keys = new Set(letters.map((l) => l.key));
      const rows = letters.map(rowFor).flat();
      for (const [key, kept] of followed) if (!keys.has(key)) rows.unshift(...kept);
      body.replaceChildren(table(["Last attempt", "Destination", "Source", "messageId", "Reason", "Attempts#", ""], rows, "No dead letters."));
    }
    await load();
    return null;
  }

  // -- violations --------------------------------------------------------------------------------

  async function violationsPage() {
    const body = el("div", { class: "panel" });
    main.replaceChildren(el("h1", {}, "Tracking-plan violations"), body);
    return every(10000, async () => {
      const rows = (await api("/api/violations")).violations.map((v) => el("tr", {},
        el("td", {}, v.source), el("td", {}, v.trackingPlan), el("td", {}, el("span", { class: `badge ${v.eventType}` }, v.eventType), " ", v.eventName),
        el("td", {}, el("code", {}, v.violationType)), el("td", {}, el("code", {}, v.field)), el("td", {}, v.description),
        el("td", { class: "num" }, fmt(v.count)), el("td", {}, when(v.lastSeen))));
      body.replaceChildren(table(["Source", "Plan", "Event", "Violation", "Field", "What", "Count#", "Last seen"], rows, "No violations: every event matched its tracking plan."));
    });
  }

  // -- routing -----------------------------------------------------------------------------------

  async function route() {
    if (cleanup) { cleanup(); cleanup = null; }
    const signOut = document.getElementById("sign-out");
    if (!token()) { signOut.hidden = true; loginPage(); return; }
    signOut.hidden = false;
    const [path, search] = (location.hash.slice(1) || "/overview").split("?");
    const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
    const params = new URLSearchParams(search || "");
    const section = parts[0] || "overview";
    document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("active", a.dataset.section === section));
    main.replaceChildren(el("p", { class: "muted" }, "Loading…"));
    try {
      if (section === "debugger") cleanup = await debuggerPage(parts[1]);
      else if (section === "destinations" && parts[1]) cleanup = await deliveryPage(parts[1]);
      else if (section === "destinations") cleanup = await destinationsPage();
      else if (section === "dead-letters") cleanup = await deadLettersPage(params);
      else if (section === "violations") cleanup = await violationsPage();
      else cleanup = await overviewPage(params);
    } catch (error) {
      main.replaceChildren(failure(error));
    }
  }

  document.getElementById("sign-out").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); route(); });
  window.addEventListener("hashchange", route);
  route();
})();

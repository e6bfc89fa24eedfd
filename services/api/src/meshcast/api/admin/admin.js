// Meshcast admin UI: plain browser JavaScript, no build step, nothing loaded from elsewhere.
//
// Every call is POST /admin/api/<method> with the session cookie (HttpOnly, so this script never
// sees it) and the X-Meshcast-Admin header the server requires of every POST (CSRF). Text from the
// server (channel names, users, payloads) is only ever set as textContent, never parsed as HTML.
"use strict";

const CSRF = { "X-Meshcast-Admin": "1" };
const INFO_EVERY_MS = 1000;
const CHANNELS_EVERY_MS = 2000;
const CHART_POINTS = 120;
const CHART_MIN_POINTS = 30;
const PUBLICATIONS = "meshcast.node.num_publications";
const DELIVERIES = "meshcast.node.num_deliveries";

const $ = (id) => document.getElementById(id);

class Unauthorized extends Error {}

async function post(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { ...CSRF, "Content-Type": "application/json" },
    body: JSON.stringify(body ?? {}),
    credentials: "same-origin",
    cache: "no-store",
  });
  if (response.status === 401) throw new Unauthorized("not logged in");
  if (response.status === 429) {
    throw new Error(`too many failed logins: try again in ${response.headers.get("Retry-After") || "a few"} s`);
  }
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return response.json();
}

// One server API method; resolves to its result, rejects with its {code, message} error.
async function api(method, params) {
  const reply = await post(`/admin/api/${method}`, params);
  if (reply.error) throw new Error(`error ${reply.error.code}: ${reply.error.message}`);
  return reply.result ?? {};
}

// -- views ------------------------------------------------------------------------------------

let polling = false;

function showLogin(message) {
  polling = false;
  $("dashboard").hidden = true;
  $("logout").hidden = true;
  $("login-view").hidden = false;
  $("login-error").textContent = message || "";
  $("secret").focus();
}

function showDashboard() {
  $("login-view").hidden = true;
  $("dashboard").hidden = false;
  $("logout").hidden = false;
  if (!polling) {
    polling = true;
    chart.reset();
    loop(pollInfo, INFO_EVERY_MS);
    loop(pollChannels, CHANNELS_EVERY_MS);
  }
}

// Runs `task` every `every` ms, one run at a time, while logged in.
async function loop(task, every) {
  while (polling) {
    try {
      await task();
      setStatus(`updated ${new Date().toLocaleTimeString()}`);
    } catch (err) {
      if (err instanceof Unauthorized) {
        showLogin("session ended: log in again");
        return;
      }
      setStatus(String(err.message || err), true);
    }
    await new Promise((resolve) => setTimeout(resolve, every));
  }
}

function setStatus(text, failed) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", Boolean(failed));
}

function cell(row, text, numeric) {
  const td = row.insertCell();
  td.textContent = String(text);
  if (numeric) td.className = "num";
  return td;
}

function fillTable(table, rows, columns, emptyText) {
  const body = table.tBodies[0];
  body.replaceChildren();
  if (!rows.length) {
    const row = body.insertRow();
    row.className = "empty";
    const td = cell(row, emptyText);
    td.colSpan = columns;
    return;
  }
  for (const values of rows) {
    const row = body.insertRow();
    values.forEach((v) => cell(row, v, typeof v === "number"));
  }
}

function duration(seconds) {
  const s = Number(seconds || 0);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}

function bytes(n) {
  const v = Number(n || 0);
  if (v >= 1 << 30) return `${(v / (1 << 30)).toFixed(1)} GiB`;
  if (v >= 1 << 20) return `${(v / (1 << 20)).toFixed(1)} MiB`;
  return `${Math.round(v / 1024)} KiB`;
}

// -- polling ----------------------------------------------------------------------------------

async function pollInfo() {
  const { nodes = [] } = await api("info");
  nodes.sort((a, b) => (a.name || "").localeCompare(b.name || ""));
  fillTable(
    $("nodes"),
    nodes.map((n) => [
      n.name || n.uid,
      n.version || "",
      n.num_clients || 0,
      n.num_users || 0,
      n.num_channels || 0,
      n.num_subs || 0,
      duration(n.uptime),
      `${Number(n.process?.cpu || 0).toFixed(1)} %`,
      bytes(n.process?.rss),
    ]),
    9,
    "no node answered",
  );
  const clients = nodes.reduce((sum, n) => sum + (n.num_clients || 0), 0);
  $("nodes-summary").textContent = `${nodes.length} nodes, ${clients} clients`;
  chart.sample(performance.now(), nodes);
}

async function pollChannels() {
  const pattern = $("channels-pattern").value.trim();
  const { channels = {} } = await api("channels", pattern ? { pattern } : {});
  const rows = Object.entries(channels)
    .map(([name, c]) => [name, c.num_clients || 0])
    .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
  fillTable($("channels"), rows, 2, "no channel has a subscriber");
  $("channels-summary").textContent = `${rows.length} channels`;
}

// -- the chart: messages per second from the gateways' cumulative counts ----------------------

const chart = {
  previous: new Map(), // node uid -> [publications, deliveries] at the previous sample
  previousAt: 0,
  points: [], // [publications/s, deliveries/s], oldest first
  total: 0,

  reset() {
    this.previous = new Map();
    this.previousAt = 0;
    this.points = [];
    this.total = 0;
    this.draw();
  },

  // A node's counts start at 0 when it (re)starts: a count lower than before is a new process.
  sample(now, nodes) {
    const current = new Map();
    for (const n of nodes) {
      const items = n.metrics?.items || {};
      current.set(n.uid, [Number(items[PUBLICATIONS] || 0), Number(items[DELIVERIES] || 0)]);
    }
    if (this.previousAt) {
      const seconds = Math.max((now - this.previousAt) / 1000, 0.001);
      let pubs = 0;
      let dels = 0;
      for (const [uid, [p, d]] of current) {
        const [p0, d0] = this.previous.get(uid) || [0, 0];
        pubs += p >= p0 ? p - p0 : p;
        dels += d >= d0 ? d - d0 : d;
      }
      this.total += pubs;
      this.points.push([pubs / seconds, dels / seconds]);
      if (this.points.length > CHART_POINTS) this.points.shift();
      const [rp, rd] = this.points[this.points.length - 1];
      $("rate-now").textContent = `${rp.toFixed(1)} publications/s, ${rd.toFixed(1)} deliveries/s`;
      const total = $("rate-total");
      total.textContent = `publications since this page opened: ${this.total}`;
      total.dataset.publications = String(this.total);
      total.dataset.points = String(this.points.length);
    }
    this.previous = current;
    this.previousAt = now;
    this.draw();
  },

  draw() {
    const canvas = $("chart");
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || canvas.width;
    const height = canvas.clientHeight || canvas.height;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const g = canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);
    const left = 44;
    const bottom = height - 18;
    const top = 8;
    const peak = Math.max(1, ...this.points.flat());
    const scale = niceCeiling(peak);
    const styles = getComputedStyle(document.documentElement);
    const color = (name, fallback) => styles.getPropertyValue(name).trim() || fallback;
    g.font = "11px system-ui, sans-serif";
    g.fillStyle = color("--muted", "#687084");
    g.strokeStyle = color("--line", "#e2e5ea");
    g.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const y = bottom - ((bottom - top) * i) / 4;
      g.beginPath();
      g.moveTo(left, y + 0.5);
      g.lineTo(width, y + 0.5);
      g.stroke();
      g.fillText(formatRate((scale * i) / 4), 4, y + 4);
    }
    // The window grows from CHART_MIN_POINTS samples to CHART_POINTS as they come, newest on the right.
    const span = Math.max(CHART_MIN_POINTS, this.points.length);
    g.fillText(`last ${span} s`, left, height - 4);
    const step = (width - left) / (span - 1);
    const x0 = left + (span - this.points.length) * step;
    // Deliveries under publications, which are dashed: with one subscriber per channel they coincide.
    const series = [
      [1, color("--accent2", "#1f9d74"), 3, []],
      [0, color("--accent", "#2f6fdf"), 2, [6, 4]],
    ];
    const yOf = (value) => bottom - ((bottom - top) * value) / scale;
    for (const [index, stroke, lineWidth, dash] of series) {
      if (!this.points.length) continue;
      g.strokeStyle = stroke;
      g.fillStyle = stroke;
      g.lineWidth = lineWidth;
      g.setLineDash(dash);
      g.beginPath();
      this.points.forEach((point, i) => {
        if (i === 0) g.moveTo(x0, yOf(point[index]));
        else g.lineTo(x0 + i * step, yOf(point[index]));
      });
      g.stroke();
      const last = this.points.length - 1;
      g.beginPath();
      g.arc(x0 + last * step, yOf(this.points[last][index]), 3, 0, 2 * Math.PI);
      g.fill();
    }
  },
};

function niceCeiling(value) {
  const magnitude = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 5, 10]) if (value <= m * magnitude) return m * magnitude;
  return 10 * magnitude;
}

function formatRate(value) {
  return value >= 1000 ? `${(value / 1000).toFixed(1)}k` : String(Math.round(value * 100) / 100);
}

// -- actions ----------------------------------------------------------------------------------

function show(id, value, failed) {
  const out = $(id);
  out.textContent = typeof value === "string" ? value : JSON.stringify(value, null, 2);
  out.classList.toggle("error", Boolean(failed));
}

async function act(resultId, work) {
  try {
    show(resultId, await work());
  } catch (err) {
    if (err instanceof Unauthorized) showLogin("session ended: log in again");
    else show(resultId, String(err.message || err), true);
  }
}

function lookup(method, channel) {
  if (method === "history") return api("history", { channel, limit: 20, reverse: true });
  return api(method, { channel });
}

function presenceText(result) {
  const members = Object.values(result.presence || {});
  if (!members.length) return "nobody is here";
  return members.map((m) => `user ${m.user || "(anonymous)"}  client ${m.client}`).join("\n");
}

function wire() {
  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("login-error").textContent = "";
    try {
      await post("/admin/login", { secret: $("secret").value });
      $("secret").value = "";
      showDashboard();
    } catch (err) {
      $("login-error").textContent = err instanceof Unauthorized ? "wrong secret" : String(err.message || err);
    }
  });
  $("logout").addEventListener("click", async () => {
    try {
      await post("/admin/logout");
    } finally {
      showLogin("logged out");
    }
  });
  $("channels-form").addEventListener("submit", (event) => {
    event.preventDefault();
    pollChannels().catch((err) => setStatus(String(err.message || err), true));
  });
  $("lookup-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const method = event.submitter?.dataset.method || "presence";
    const channel = $("lookup-channel").value.trim();
    act("lookup-result", async () => {
      const result = await lookup(method, channel);
      return method === "presence" ? presenceText(result) : result;
    });
  });
  $("publish-form").addEventListener("submit", (event) => {
    event.preventDefault();
    act("publish-result", async () => {
      let data;
      try {
        data = JSON.parse($("publish-data").value);
      } catch {
        throw new Error("data is not JSON");
      }
      const result = await api("publish", { channel: $("publish-channel").value.trim(), data });
      return result.offset ? `published at offset ${result.offset} (epoch ${result.epoch})` : "published";
    });
  });
  $("disconnect-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const user = $("disconnect-user").value.trim();
    const client = $("disconnect-client").value.trim();
    act("disconnect-result", async () => {
      await api("disconnect", client ? { user, client } : { user });
      return `disconnected ${client ? `client ${client} of ` : ""}user ${user}`;
    });
  });
}

async function start() {
  wire();
  try {
    await api("info");
    showDashboard();
  } catch (err) {
    showLogin(err instanceof Unauthorized ? "" : String(err.message || err));
  }
}

document.addEventListener("DOMContentLoaded", start);

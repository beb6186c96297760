// The daemon's page: rules, live connections, throughput per uplink, doctor.
// Everything that comes from the API (targets, names) is put in the page as text, never
// as markup.
"use strict";

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("mptcp-token") || "";

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token) headers["Authorization"] = "Bearer " + token;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    $("token-section").hidden = false;
    throw new Error("the API needs its token");
  }
  return response;
}

async function json(path) {
  const response = await api(path);
  if (!response.ok) throw new Error(path + ": " + response.status);
  return response.json();
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function megabytes(bytes) {
  return (bytes / 1e6).toFixed(1) + " MB";
}

// ---- health ----

async function refreshHealth() {
  try {
    const health = await json("/health");
    const status = $("status");
    status.textContent = health.status + (health.problems ? ": " + health.problems.join("; ") : "");
    status.className = health.status;
  } catch (e) {
    $("status").textContent = e.message;
  }
}

// ---- connections ----

async function refreshConnections() {
  const list = await json("/connections");
  const body = $("connections");
  body.replaceChildren();
  for (const c of list) {
    const row = document.createElement("tr");
    cell(row, String(c.id));
    cell(row, c.client);
    cell(row, c.target);
    cell(row, c.via + (c.why_direct ? " (" + c.why_direct + ")" : ""));
    cell(row, c.transport);
    const subflows = c.subflows
      .map((s) => s.local + " → " + s.remote + ": " + megabytes(s.bytes_acked + s.bytes_received))
      .join("\n");
    cell(row, subflows || "-", "subflows");
    body.appendChild(row);
  }
}

// ---- throughput per uplink, from /metrics ----

const history = new Map(); // uplink -> [{t, bytes}]
const colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];
const WINDOW = 60;

function uplinkBytes(text) {
  const totals = new Map();
  const pattern = /^mptcp_socks_uplink_bytes_total\{([^}]*)\} (\d+)/;
  for (const line of text.split("\n")) {
    const match = pattern.exec(line);
    if (!match) continue;
    const labels = {};
    for (const pair of match[1].matchAll(/(\w+)="([^"]*)"/g)) labels[pair[1]] = pair[2];
    const name = labels.local_address + " (" + labels.interface + ")";
    totals.set(name, (totals.get(name) || 0) + Number(match[2]));
  }
  return totals;
}

async function refreshChart() {
  const response = await api("/metrics");
  if (!response.ok) return;
  const now = Date.now() / 1000;
  for (const [name, bytes] of uplinkBytes(await response.text())) {
    const points = history.get(name) || [];
    points.push({ t: now, bytes });
    while (points.length > WINDOW + 1) points.shift();
    history.set(name, points);
  }
  drawChart();
}

function rates(points) {
  const out = [];
  for (let i = 1; i < points.length; i++) {
    const dt = points[i].t - points[i - 1].t;
    out.push(dt > 0 ? ((points[i].bytes - points[i - 1].bytes) * 8) / dt / 1e6 : 0);
  }
  return out;
}

function drawChart() {
  const canvas = $("chart");
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  const series = [...history.entries()].map(([name, points]) => [name, rates(points)]);
  const top = Math.max(1, ...series.flatMap(([, r]) => r));
  const legend = $("legend");
  legend.replaceChildren();
  series.forEach(([name, r], i) => {
    const color = colors[i % colors.length];
    g.strokeStyle = color;
    g.beginPath();
    r.forEach((mbit, j) => {
      const x = (canvas.width * j) / WINDOW;
      const y = canvas.height - (canvas.height * mbit) / top;
      if (j === 0) g.moveTo(x, y);
      else g.lineTo(x, y);
    });
    g.stroke();
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.style.background = color;
    item.appendChild(swatch);
    item.appendChild(document.createTextNode(name + ": " + (r.length ? r[r.length - 1].toFixed(1) : "0") + " Mbit/s"));
    legend.appendChild(item);
  });
  g.fillStyle = "#555";
  g.fillText(top.toFixed(1) + " Mbit/s", 4, 12);
}

// ---- rules ----

async function refreshRules() {
  const rules = await json("/rules");
  const body = $("rules");
  body.replaceChildren();
  for (const rule of rules) {
    const row = document.createElement("tr");
    cell(row, rule.ip);
    cell(row, rule.enable ? "on" : "off");
    cell(row, rule.scheduler);
    cell(row, rule.path_manager);
    cell(row, rule.access);
    cell(row, rule.via || "direct");
    if (rule.in_effect) cell(row, "yes");
    else cell(row, "no: " + (rule.not_in_effect || []).join("; "), "not-in-effect");
    const actions = cell(row, "");
    const edit = document.createElement("button");
    edit.textContent = "edit";
    edit.addEventListener("click", () => editRule(rule));
    const remove = document.createElement("button");
    remove.textContent = "delete";
    remove.addEventListener("click", () => deleteRule(rule.ip));
    actions.append(edit, remove);
    body.appendChild(row);
  }
}

function editRule(rule) {
  $("rule-form-title").textContent = "Edit the rule for " + rule.ip;
  $("rule-ip").value = rule.ip;
  $("rule-mptcp").checked = rule.enable;
  $("rule-scheduler").value = rule.scheduler;
  $("rule-pm").value = rule.path_manager;
  $("rule-access").value = rule.access;
  $("rule-via").value = rule.via || "direct";
}

function clearForm() {
  $("rule-form").reset();
  $("rule-form-title").textContent = "Add a rule";
  $("rule-error").textContent = "";
}

async function saveRule(event) {
  event.preventDefault();
  const body = {
    ip: $("rule-ip").value.trim(),
    enable: $("rule-mptcp").checked ? "1" : "0",
    scheduler: $("rule-scheduler").value,
    path_manager: $("rule-pm").value.trim(),
    access: $("rule-access").value,
    via: $("rule-via").value.trim(),
  };
  const response = await api("/rules", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (response.ok) {
    clearForm();
    $("rule-error").textContent = "saved";
  } else {
    const answer = await response.json().catch(() => ({}));
    $("rule-error").textContent = answer.error || "refused (" + response.status + ")";
  }
  await refreshRules();
}

async function deleteRule(destination) {
  const path = "/rules/" + encodeURIComponent(destination);
  const response = await api(path, { method: "DELETE" });
  if (!response.ok) {
    const answer = await response.json().catch(() => ({}));
    $("rule-error").textContent = answer.error || "refused (" + response.status + ")";
  }
  await refreshRules();
}

// ---- doctor ----

async function runDoctor() {
  const list = $("doctor");
  list.replaceChildren();
  const report = await json("/doctor");
  for (const finding of report.findings) {
    const item = document.createElement("li");
    item.className = finding.verdict;
    item.textContent = finding.verdict + " · " + finding.check + ": " + finding.message;
    if (finding.fix) {
      const fix = document.createElement("code");
      fix.textContent = finding.fix;
      item.appendChild(fix);
    }
    list.appendChild(item);
  }
}

// ---- start ----

async function tick() {
  try {
    await Promise.all([refreshHealth(), refreshConnections(), refreshChart()]);
  } catch (e) {
    $("status").textContent = e.message;
  }
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  token = $("token").value;
  sessionStorage.setItem("mptcp-token", token);
  $("token-section").hidden = true;
  start();
});
$("rule-form").addEventListener("submit", (event) => saveRule(event).catch((e) => ($("rule-error").textContent = e.message)));
$("rule-reset").addEventListener("click", clearForm);
$("doctor-run").addEventListener("click", () => runDoctor().catch(() => {}));

let ticking = null;
function start() {
  refreshRules().catch(() => {});
  runDoctor().catch(() => {});
  tick();
  if (!ticking) ticking = setInterval(tick, 1000);
}
start();

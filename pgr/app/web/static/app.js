// The operator's search page: plain JS over the authenticated API (no build step, nothing from the network
// but this server). Data are only ever put in the page as text, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  csrf: null, role: null, pickedId: null, page: 0, total: 0, expanded: false,
  confirmed: new Map(), rejected: new Set(),
};

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (options.method && options.method !== "GET" && state.csrf) headers["X-CSRF-Token"] = state.csrf;
  const response = await fetch(path, Object.assign({}, options, { headers, credentials: "same-origin" }));
  if (!response.ok) {
    let detail = response.statusText;
    try { const body = await response.json(); detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail); } catch (e) { /* not JSON */ }
    const error = new Error(`${response.status}: ${detail}`);
    error.status = response.status;
    throw error;
  }
  return response;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function showLogin() { $("login-view").hidden = false; $("search-view").hidden = true; $("logout").hidden = true; $("who").textContent = ""; }

async function showSearch(me) {
  state.csrf = me.csrf_token; state.role = me.role;
  $("who").textContent = `${me.user} (${me.role})`;
  $("login-view").hidden = true; $("search-view").hidden = false; $("logout").hidden = false;
  for (const b of document.querySelectorAll(".admin-only")) b.hidden = me.role !== "admin";
  const status = await (await api("/api/status")).json();
  const box = $("cameras");
  box.querySelectorAll("label").forEach((l) => l.remove());
  for (const cam of status.cameras) {
    box.append(el("label", {}, el("input", { type: "checkbox", value: cam.id, name: "camera" }), ` ${cam.id} (${cam.detections})`));
  }
  const kept = (days) => (days ? `kept ${days} days` : "kept until erased");
  const own = status.cameras.filter((c) => c.retention_days !== status.retention_days).map((c) => `${c.id} ${kept(c.retention_days)}`);
  $("status-line").textContent = `${status.detections} detections indexed; model ${status.model}; ` +
    kept(status.retention_days) + (own.length ? ` (${own.join(", ")})` : "");
}

async function start() {
  try { showSearch(await (await api("/api/me")).json()); } catch (e) { showLogin(); }
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("login-error").textContent = "";
  try {
    const me = await (await api("/api/login", { method: "POST", body: new FormData(event.target) })).json();
    event.target.reset();
    await showSearch(me);
  } catch (e) { $("login-error").textContent = e.status === 401 ? "Wrong user name or password." : e.message; }
});

$("logout").addEventListener("click", async () => { try { await api("/api/logout", { method: "POST" }); } finally { showLogin(); } });

$("image").addEventListener("change", () => {
  state.pickedId = null; state.expanded = false;
  const file = $("image").files[0];
  $("query-preview").replaceChildren(file ? el("img", { src: URL.createObjectURL(file), alt: "query" }) : "");
});

function toUnix(id) { const v = $(id).value; return v ? String(new Date(v).getTime() / 1000) : null; }

async function search(page) {
  const form = new FormData();
  const file = $("image").files[0];
  if (file && !state.pickedId) form.append("image", file);
  const ids = [];
  if (state.pickedId) ids.push(state.pickedId);
  if (state.expanded) for (const id of state.confirmed.keys()) if (!ids.includes(id)) ids.push(id);
  ids.forEach((id) => form.append("query_ids", id));
  state.rejected.forEach((id) => form.append("exclude_ids", id));
  document.querySelectorAll("#cameras input:checked").forEach((c) => form.append("cameras", c.value));
  for (const [name, id] of [["since", "since"], ["until", "until"]]) { const t = toUnix(id); if (t) form.append(name, t); }
  form.append("page", String(page));
  form.append("page_size", $("page-size").value);
  if (!form.has("image") && !ids.length) { $("search-error").textContent = "Choose a person image or pick a result as the query."; return; }
  $("search-error").textContent = ""; $("search-button").disabled = true;
  $("summary").textContent = "Searching…";
  try {
    const result = await (await api("/api/search", { method: "POST", body: form })).json();
    state.page = result.page; state.total = result.total;
    render(result);
  } catch (e) {
    $("summary").textContent = ""; $("search-error").textContent = e.message;
    if (e.status === 401) showLogin();
  } finally { $("search-button").disabled = false; }
}

function fmt(v) { return v === null || v === undefined ? "–" : v.toFixed(3); }

function render(result) {
  const list = $("results");
  list.replaceChildren();
  const pages = Math.max(1, Math.ceil(result.total / result.page_size));
  $("summary").textContent = `${result.total} results for ${result.queries} query crop${result.queries > 1 ? "s" : ""}` +
    (state.expanded ? " (with the confirmed crops)" : "");
  for (const hit of result.results) list.append(card(hit));
  $("page-label").textContent = `page ${result.page + 1} of ${pages}`;
  $("prev").disabled = result.page === 0; $("next").disabled = result.page + 1 >= pages;
}

function card(hit) {
  const item = el("li", { class: "card", "data-id": hit.detection_id });
  if (state.confirmed.has(hit.detection_id)) item.classList.add("same");
  const img = el("img", { src: hit.thumbnail_url, alt: `person on ${hit.camera}`, loading: "lazy", title: "open in its frame" });
  img.addEventListener("click", () => openFrame(hit));
  const same = el("button", { type: "button", class: "same-button", text: "✓ Same person" });
  const not = el("button", { type: "button", class: "not-button", text: "✗ Not this person" });
  const pick = el("button", { type: "button", class: "pick-button", text: "Use as query" });
  same.addEventListener("click", () => {
    if (state.confirmed.has(hit.detection_id)) { state.confirmed.delete(hit.detection_id); item.classList.remove("same"); }
    else { state.confirmed.set(hit.detection_id, hit); state.rejected.delete(hit.detection_id); item.classList.add("same"); item.classList.remove("not"); }
    renderConfirmed();
  });
  not.addEventListener("click", () => {
    state.rejected.add(hit.detection_id); state.confirmed.delete(hit.detection_id);
    item.classList.add("not"); item.classList.remove("same"); renderConfirmed();
  });
  pick.addEventListener("click", () => {
    state.pickedId = hit.detection_id; state.expanded = false;
    $("query-preview").replaceChildren(el("img", { src: hit.thumbnail_url, alt: "query" }), el("div", { class: "picked", text: `query: ${hit.detection_id}` }));
    search(0);
  });
  const scores = el("details", {}, el("summary", { text: "PGR scores" }),
    el("div", { class: "pgr", text: `instance ${fmt(hit.s_ins)} · part ${fmt(hit.s_part)} · pixel ${fmt(hit.s_pixel)}` }));
  item.append(img,
    el("div", { class: "meta" }, el("span", { class: "score", text: `#${hit.rank} · ${hit.score.toFixed(3)}` }), ` · ${hit.camera}`),
    el("div", { class: "meta time", text: hit.time_iso.replace("T", " ") }),
    scores, el("div", { class: "actions" }, same, not, pick));
  return item;
}

function renderConfirmed() {
  const box = $("confirmed");
  box.replaceChildren(...[...state.confirmed.values()].map((h) => el("img", { src: h.thumbnail_url, alt: h.detection_id, title: h.detection_id })));
  $("confirmed-count").textContent = String(state.confirmed.size);
  const none = state.confirmed.size === 0;
  $("export-button").disabled = none; $("expand-button").disabled = none; $("erase-button").disabled = none;
  $("erase-identity-button").disabled = none;
}

async function openFrame(hit) {
  $("frame-caption").textContent = `${hit.camera} · ${hit.time_iso} · frame ${hit.frame}`;
  const img = $("frame-image");
  img.removeAttribute("src");
  $("frame-dialog").showModal();
  try {
    const blob = await (await api(hit.frame_url)).blob();
    img.src = URL.createObjectURL(blob);
  } catch (e) { $("frame-caption").textContent += ` — ${e.message}`; }
}

$("search-form").addEventListener("submit", (event) => { event.preventDefault(); state.expanded = false; search(0); });
$("expand-button").addEventListener("click", () => { state.expanded = true; search(0); });
$("prev").addEventListener("click", () => search(state.page - 1));
$("next").addEventListener("click", () => search(state.page + 1));

$("export-button").addEventListener("click", async () => {
  try {
    const response = await api("/api/export", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ detection_ids: [...state.confirmed.keys()] }),
    });
    const link = el("a", { href: URL.createObjectURL(await response.blob()), download: "pgr-export.zip" });
    document.body.append(link); link.click(); link.remove();
  } catch (e) { $("search-error").textContent = e.message; }
});

$("erase-button").addEventListener("click", async () => {
  const reason = prompt(`Erase the ${state.confirmed.size} confirmed detections (index, crops, features) for good? Give the request's reference:`);
  if (!reason) return;
  try {
    const result = await (await api("/api/erasure", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ detection_ids: [...state.confirmed.keys()], reason }),
    })).json();
    state.confirmed.clear(); renderConfirmed();
    $("summary").textContent = `${result.erased.length} detections erased.`; $("results").replaceChildren();
  } catch (e) { $("search-error").textContent = e.message; }
});

$("erase-identity-button").addEventListener("click", async () => {
  $("search-error").textContent = "";
  try {
    const identities = new Set();
    for (const id of state.confirmed.keys()) {
      try {
        identities.add((await (await api(`/api/detections/${encodeURIComponent(id)}/identity`)).json()).identity_id);
      } catch (e) { if (e.status !== 404) throw e; }
    }
    if (!identities.size) { $("search-error").textContent = "The confirmed detections belong to no identity (the matcher has not linked them)."; return; }
    const names = [...identities].join(", ");
    const reason = prompt(`Erase everything stored about ${identities.size === 1 ? "identity" : "identities"} ${names} (their tracklets, and every detection of their tracks: index, crops, features) for good? Give the request's reference:`);
    if (!reason) return;
    let detections = 0;
    for (const ident of identities) {
      const result = await (await api(`/api/identities/${encodeURIComponent(ident)}/erasure`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ reason }),
      })).json();
      detections += result.detections;
    }
    state.confirmed.clear(); renderConfirmed();
    $("summary").textContent = `${identities.size} ${identities.size === 1 ? "identity" : "identities"} erased: ${detections} detections.`;
    $("results").replaceChildren();
  } catch (e) { $("search-error").textContent = e.message; }
});

start();

// The admin console: dashboard, domains (DKIM keys and the DNS records to publish), users,
// the delivery queue and the message trace. Every page's data comes from admin-only API
// endpoints, so a plain user who opens one gets the server's 403, not just a hidden link.

import {
  $, address, api, cell, el, explain, fail, focusHeading, formatAge, formatDate, formatSize, HttpError,
  Pages, say, show, state,
} from "./core.js";

const PANELS = ["dashboard-panel", "domains-panel", "domain-panel", "users-panel", "user-panel",
  "queue-panel", "trace-panel"];
const QUEUE_PAGE = 50;
const MB = 1024 * 1024;

/** The queue page's filter, and where in its rows (set up by `initAdmin`). */
let queueFilter = {};
let queuePages = null;

function showPanel(id) {
  show("admin-view");
  $("admin-denied").hidden = true;
  for (const panel of PANELS) $(panel).hidden = panel !== id;
  for (const link of document.querySelectorAll("#admin-tabs a")) {
    if (link.dataset.panel === id) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  focusHeading($(id).querySelector("h2"));
}

/** Forgets what the pages showed (at sign-out, and when a page is refused). */
export function clearAdmin() {
  for (const body of document.querySelectorAll("#admin-view tbody, #trace-result")) body.replaceChildren();
}

/** A failed load: a 403 means this account is not an administrator (the server says so). */
function loadFailed(error) {
  if (error instanceof HttpError && error.status === 403) {
    clearAdmin();
    for (const panel of PANELS) $(panel).hidden = true;
    const denied = $("admin-denied");
    denied.textContent = "This page is for administrators. Your account cannot open it.";
    denied.hidden = false;
    return;
  }
  fail(error);
}

/** The answers of admin GET requests, or null once their failure is reported. */
async function fetchAll(...paths) {
  try {
    return await Promise.all(paths.map((path) => api("GET", path)));
  } catch (error) {
    loadFailed(error);
    return null;
  }
}

function confirmed(question) {
  return window.confirm(question);
}

function button(text, onclick, className) {
  return el("button", { type: "button", class: className, onclick, text });
}

function definitions(target, pairs) {
  target.replaceChildren();
  for (const [term, value] of pairs) target.append(el("dt", { text: term }), el("dd", { text: String(value) }));
}

// ------------------------------------------------------------------------------ dashboard

async function dashboard() {
  showPanel("dashboard-panel");
  const answers = await fetchAll("/stats", "/cluster");
  if (!answers) return;
  const [stats, cluster] = answers;
  const warnings = $("dash-warning-list");
  warnings.replaceChildren(...stats.setup_warnings.map((w) => el("li", { text: w })));
  $("dash-warnings").hidden = stats.setup_warnings.length === 0;
  const h = stats.last_hour;
  definitions($("dash-hour"), [["Accepted", h.accepted], ["Delivered", h.delivered],
    ["Bounced", h.bounced], ["Deferred", h.deferred]]);
  definitions($("dash-queue"), Object.entries(stats.queue).map(([s, n]) => [s[0].toUpperCase() + s.slice(1), n]));
  const rows = $("dash-deferred-rows");
  rows.replaceChildren();
  for (const d of stats.deferred_by_domain) {
    const link = el("a", { href: `#admin/queue?status=deferred&domain=${encodeURIComponent(d.domain)}`, text: d.domain });
    rows.append(el("tr", {}, cell(link, "", "Domain"), cell(String(d.count), "num", "Deferred")));
  }
  $("dash-deferred-empty").hidden = stats.deferred_by_domain.length > 0;
  $("dash-deferred").hidden = stats.deferred_by_domain.length === 0;

  const owned = new Map();
  for (const p of cluster.partitions) {
    if (p.owner) owned.set(p.owner, [...(owned.get(p.owner) || []), p.id]);
  }
  const members = $("dash-member-rows");
  members.replaceChildren();
  for (const m of cluster.members) {
    const parts = owned.get(m.node_id) || [];
    const name = m.node_id === cluster.node_id ? `${m.node_id} (this node)` : m.node_id;
    members.append(el("tr", {},
      cell(name, "", "Node"), cell(m.state, "", "State"), cell(m.roles.join(", "), "", "Roles"),
      cell(parts.length ? `${parts.length}: ${parts.join(", ")}` : "none", "wrap", "Partitions")));
  }
  const unowned = cluster.partitions.filter((p) => !p.owner).map((p) => p.id);
  $("dash-unowned").textContent = unowned.length
    ? `Partitions without an owner right now: ${unowned.join(", ")}.`
    : `All ${cluster.partitions.length} queue partitions have an owner.`;
}

// ------------------------------------------------------------------------------ domains

async function domains() {
  showPanel("domains-panel");
  const [list] = (await fetchAll("/domains")) || [];
  if (!list) return;
  const rows = $("domain-rows");
  rows.replaceChildren();
  for (const d of list.items) {
    const link = el("a", { href: `#admin/domain/${encodeURIComponent(d.name)}`, text: d.name });
    rows.append(el("tr", {}, cell(link, "", "Domain"), cell(formatDate(d.created_at), "date", "Added")));
  }
  $("domains-empty").hidden = list.items.length > 0;
  $("domains-table").hidden = list.items.length === 0;
}

async function addDomain(event) {
  event.preventDefault();
  const name = $("new-domain").value.trim();
  const error = $("domain-error");
  error.textContent = "";
  try {
    await api("POST", "/domains", { name });
  } catch (e) {
    if (e instanceof HttpError && e.status === 409) error.textContent = `${name} is already hosted here.`;
    else error.textContent = explain(e);
    return;
  }
  $("add-domain-form").reset();
  state.notice = `Domain ${name} added. Create its DKIM key and publish its DNS records below.`;
  location.hash = `#admin/domain/${encodeURIComponent(name.toLowerCase())}`;
}

/** Copies a value to the clipboard, or selects it for the reader to copy. */
async function copy(text, node) {
  try {
    await navigator.clipboard.writeText(text);
    say("Copied.");
  } catch {
    const range = document.createRange();
    range.selectNodeContents(node);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    say("Selected: press Ctrl+C to copy.");
  }
}

let domainName = "";

async function domain(name) {
  domainName = name;
  showPanel("domain-panel");
  $("domain-title").textContent = name;
  $("dkim-error").textContent = "";
  let keys;
  let dns;
  try {
    [keys, dns] = await Promise.all([
      api("GET", `/domains/${encodeURIComponent(name)}/dkim`),
      api("GET", `/domains/${encodeURIComponent(name)}/dns`),
    ]);
  } catch (error) {
    if (error instanceof HttpError && error.status === 404) {
      state.notice = `There is no domain ${name}.`;
      location.hash = "#admin/domains";
      return;
    }
    return loadFailed(error);
  }
  const rows = $("dkim-rows");
  rows.replaceChildren();
  for (const k of keys.items) {
    const remove = button("Remove", () => removeKey(k.selector), "danger");
    remove.setAttribute("aria-label", `Remove DKIM key ${k.selector}`);
    rows.append(el("tr", {},
      cell(k.selector, "", "Selector"), cell(k.algorithm, "", "Algorithm"),
      cell(formatDate(k.created_at), "date", "Created"),
      cell(k.signing ? "signs new mail" : "older key", "", "Use"), cell(remove, "", "")));
  }
  $("dkim-empty").hidden = keys.items.length > 0;
  $("dkim-table").hidden = keys.items.length === 0;
  const records = $("dns-rows");
  records.replaceChildren();
  for (const r of dns.items) {
    // TXT values as zone files want them: strings of at most 255 bytes, each quoted.
    const text = r.type === "TXT" ? r.value_strings.map((s) => `"${s}"`).join(" ") : r.value;
    const value = el("code", { class: "record", text });
    const copyButton = button("Copy", () => copy(text, value));
    copyButton.setAttribute("aria-label", `Copy the ${r.type} record of ${r.name}`);
    records.append(el("tr", {},
      cell(r.type, "", "Type"), cell(el("code", { text: r.name }), "wrap", "Name"),
      cell(value, "wrap", "Value"), cell(copyButton, "", ""), cell(r.purpose, "", "Purpose")));
  }
}

async function createKey(event) {
  event.preventDefault();
  const error = $("dkim-error");
  error.textContent = "";
  const body = { algorithm: $("dkim-algorithm").value };
  const selector = $("dkim-selector").value.trim();
  if (selector) body.selector = selector;
  try {
    const key = await api("POST", `/domains/${encodeURIComponent(domainName)}/dkim`, body);
    $("dkim-form").reset();
    await domain(domainName);
    say(`DKIM key ${key.selector} created. Publish its TXT record; it signs new mail now.`);
  } catch (e) {
    error.textContent = explain(e);
  }
}

async function removeKey(selector) {
  if (!confirmed(`Remove DKIM key ${selector} of ${domainName}? Mail signed with it fails DKIM checks once its DNS record is gone.`)) return;
  try {
    await api("DELETE", `/domains/${encodeURIComponent(domainName)}/dkim/${encodeURIComponent(selector)}`);
    await domain(domainName);
    say(`DKIM key ${selector} removed.`);
  } catch (e) {
    fail(e);
  }
}

async function removeDomain() {
  if (!confirmed(`Remove ${domainName}? Mail for it will be refused.`)) return;
  try {
    await api("DELETE", `/domains/${encodeURIComponent(domainName)}`);
    state.notice = `Domain ${domainName} removed.`;
    location.hash = "#admin/domains";
  } catch (e) {
    if (e instanceof HttpError && e.status === 409) say(`${domainName} still has users; remove them first.`);
    else fail(e);
  }
}

// ------------------------------------------------------------------------------ users

function quotaText(user) {
  const used = formatSize(user.used_bytes);
  return user.quota_bytes === null ? `${used} (no quota)` : `${used} of ${formatSize(user.quota_bytes)}`;
}

async function users() {
  showPanel("users-panel");
  const [list] = (await fetchAll("/users")) || [];
  if (!list) return;
  const rows = $("user-rows");
  rows.replaceChildren();
  for (const u of list.items) {
    const link = el("a", { href: `#admin/user/${encodeURIComponent(u.email)}`, text: u.email });
    rows.append(el("tr", {}, cell(link, "wrap", "User"), cell(quotaText(u), "", "Mailbox"),
      cell(u.is_admin ? "administrator" : "user", "", "Role")));
  }
}

/** Megabytes typed into a field as bytes; empty is no quota (null). */
function quotaBytes(id) {
  const text = $(id).value.trim();
  if (text === "") return null;
  const mb = Number(text);
  if (!Number.isFinite(mb) || mb < 0) throw new Error("The quota is a number of megabytes, 0 or more, or empty for none.");
  return Math.round(mb * MB);
}

async function addUser(event) {
  event.preventDefault();
  const error = $("user-error");
  error.textContent = "";
  const email = $("new-user-email").value.trim();
  let body;
  try {
    body = {
      email,
      password: $("new-user-password").value,
      is_admin: $("new-user-admin").checked,
      quota_bytes: quotaBytes("new-user-quota"),
    };
  } catch (e) {
    error.textContent = e.message;
    return;
  }
  try {
    await api("POST", "/users", body);
  } catch (e) {
    if (e instanceof HttpError && e.status === 409) error.textContent = `${email} already exists.`;
    else error.textContent = explain(e);
    return;
  }
  $("add-user-form").reset();
  await users();
  say(`User ${email.toLowerCase()} added.`);
}

let userEmail = "";

async function user(email) {
  userEmail = email;
  showPanel("user-panel");
  $("user-title").textContent = email;
  $("user-panel-error").textContent = "";
  const [list] = (await fetchAll("/users")) || [];
  if (!list) return;
  const u = list.items.find((x) => x.email === email);
  if (!u) {
    state.notice = `There is no user ${email}.`;
    location.hash = "#admin/users";
    return;
  }
  $("user-usage").textContent = quotaText(u);
  $("user-quota").value = u.quota_bytes === null ? "" : String(+(u.quota_bytes / MB).toFixed(3));
  $("user-role").textContent = u.is_admin ? "Administrator" : "User";
  $("toggle-admin").textContent = u.is_admin ? "Remove administrator rights" : "Make administrator";
  $("toggle-admin").dataset.admin = u.is_admin ? "1" : "";
  const self = email === state.session.email;
  $("toggle-admin").disabled = self;
  $("delete-user").disabled = self;
  $("user-self-note").hidden = !self;
}

async function userChange(body, done) {
  const error = $("user-panel-error");
  error.textContent = "";
  try {
    await api("PATCH", `/users/${encodeURIComponent(userEmail)}`, body);
    await user(userEmail);
    say(done);
  } catch (e) {
    error.textContent = explain(e);
  }
}

function saveQuota(event) {
  event.preventDefault();
  let quota;
  try {
    quota = quotaBytes("user-quota");
  } catch (e) {
    $("user-panel-error").textContent = e.message;
    return;
  }
  userChange({ quota_bytes: quota }, quota === null ? "Quota removed." : `Quota set to ${formatSize(quota)}.`);
}

function toggleAdmin() {
  const admin = !$("toggle-admin").dataset.admin;
  userChange({ is_admin: admin }, admin ? `${userEmail} is an administrator now.` : `${userEmail} is a plain user now.`);
}

async function resetPassword(event) {
  event.preventDefault();
  const error = $("user-panel-error");
  error.textContent = "";
  try {
    await api("PUT", `/users/${encodeURIComponent(userEmail)}/password`, { password: $("reset-password").value });
  } catch (e) {
    error.textContent = explain(e);
    return;
  }
  $("reset-form").reset();
  say(`Password of ${userEmail} reset; their sessions and API tokens are signed out.`);
}

async function deleteUser() {
  if (!confirmed(`Delete ${userEmail} and all of their mail? This cannot be undone.`)) return;
  try {
    await api("DELETE", `/users/${encodeURIComponent(userEmail)}`);
    state.notice = `User ${userEmail} deleted.`;
    location.hash = "#admin/users";
  } catch (e) {
    $("user-panel-error").textContent = explain(e);
  }
}

// ------------------------------------------------------------------------------ queue

async function queuePage(params) {
  showPanel("queue-panel");
  if (params) {
    queueFilter = Object.fromEntries([...params].filter(([, v]) => v));
    queuePages.reset();
    $("queue-status").value = queueFilter.status || "";
    $("queue-domain").value = queueFilter.domain || "";
    $("queue-recipient").value = queueFilter.recipient || "";
  }
  const query = queuePages.query({ ...queueFilter, limit: String(QUEUE_PAGE) });
  const [page] = (await fetchAll(`/queue?${query}`)) || [];
  if (!page) return;
  queuePages.loaded(page);
  const rows = $("queue-rows");
  rows.replaceChildren();
  for (const q of page.items) {
    const actions = el("span", { class: "row-actions" });
    if (q.status === "queued" || q.status === "deferred") {
      for (const [text, action] of [["Retry now", "retry"], ["Cancel", "cancel"], ["Cancel and bounce", "bounce"]]) {
        const b = button(text, () => queueAction(q, action), action === "retry" ? "" : "danger");
        b.setAttribute("aria-label", `${text}: ${q.recipient}`);
        actions.append(b);
      }
    }
    const trace = el("a", { href: `#admin/trace/${encodeURIComponent(q.id)}` }, address(q.recipient));
    const when = q.next_attempt_at ? `next ${formatDate(q.next_attempt_at)}` : "";
    const age = el("time", { datetime: q.created_at, title: formatDate(q.created_at), text: formatAge(q.created_at) });
    rows.append(el("tr", { "data-queue-id": q.id },
      cell(trace, "", "Recipient"), cell(q.sender ? address(q.sender) : "<> (bounce)", "", "Sender"),
      cell(age, "age", "Age"), cell(q.status, `status status-${q.status}`, "Status"),
      cell(`${q.attempts}${when ? `, ${when}` : ""}`, "", "Attempts"),
      cell(q.last_error || "", "wrap", "Last error"), cell(actions, "", "")));
  }
  const empty = page.items.length === 0;
  $("queue-empty").hidden = !empty;
  $("queue-empty").textContent = Object.keys(queueFilter).length
    ? "Nothing in the queue matches this filter."
    : "The queue is empty.";
  $("queue-table").hidden = empty;
}

function filterQueue(event) {
  event.preventDefault();
  const params = new URLSearchParams();
  for (const [key, id] of [["status", "queue-status"], ["domain", "queue-domain"], ["recipient", "queue-recipient"]]) {
    const value = $(id).value.trim();
    if (value) params.set(key, value);
  }
  const hash = `#admin/queue${params.size ? `?${params}` : ""}`;
  if (location.hash === hash) queuePage(params);
  else location.hash = hash;
}

async function queueAction(row, action) {
  if (action !== "retry" && !confirmed(action === "bounce"
    ? `Cancel delivery to ${row.recipient} and tell the sender it failed?`
    : `Cancel delivery to ${row.recipient}? The sender is not told.`)) return;
  try {
    if (action === "retry") await api("POST", `/queue/${encodeURIComponent(row.id)}/retry`);
    else await api("DELETE", `/queue/${encodeURIComponent(row.id)}${action === "bounce" ? "?bounce=true" : ""}`);
  } catch (e) {
    if (e instanceof HttpError && e.status === 409) say(`Delivery to ${row.recipient} is already finished.`);
    else fail(e);
    return;
  }
  await queuePage();
  say(action === "retry" ? `Retrying delivery to ${row.recipient} now.`
    : action === "bounce" ? `Delivery to ${row.recipient} cancelled; the sender gets a bounce.`
      : `Delivery to ${row.recipient} cancelled.`);
}

// ------------------------------------------------------------------------------ trace

async function trace(q) {
  showPanel("trace-panel");
  const out = $("trace-result");
  out.replaceChildren();
  if (!q) return;
  $("trace-q").value = q;
  let result;
  try {
    result = await api("GET", `/trace?${new URLSearchParams({ q })}`);
  } catch (error) {
    if (error instanceof HttpError && error.status === 404) {
      out.append(el("p", { text: `No message matches ${q}. Give a Message-ID, an acceptance id or a queue id.` }));
      return;
    }
    return loadFailed(error);
  }
  for (const m of result.messages) {
    const events = el("ol", { class: "timeline" },
      el("li", { text: `${formatDate(m.received_at)}: accepted from ${m.envelope_from || "<> (a bounce)"}, ${formatSize(m.size)}, id ${m.id}` }));
    for (const local of m.local_recipients) {
      events.append(el("li", { text: `${formatDate(m.received_at)}: delivered to the mailbox of ${local}` }));
    }
    for (const r of m.remote) {
      events.append(el("li", { text: `${formatDate(m.received_at)}: queued for ${r.recipient} (queue id ${r.queue_id})` }));
      for (const a of r.history) {
        events.append(el("li", { class: `outcome-${a.outcome}`, text: `${formatDate(a.attempted_at)}: ${a.outcome} for ${r.recipient}${a.detail ? `: ${a.detail}` : ""}${a.node ? ` (node ${a.node})` : ""}` }));
      }
      events.append(el("li", { class: "now", text: `Now: ${r.status} after ${r.attempts} attempt${r.attempts === 1 ? "" : "s"}` }));
    }
    out.append(el("section", { class: "trace" },
      el("h3", { text: m.message_id ? `<${m.message_id}>` : `Message ${m.id}` }),
      el("p", { text: `From ${m.from || "(no From header)"}` }), events));
  }
}

function traceSubmit(event) {
  event.preventDefault();
  const q = $("trace-q").value.trim();
  if (!q) {
    say("Enter a Message-ID, an acceptance id or a queue id.");
    return;
  }
  const hash = `#admin/trace/${encodeURIComponent(q)}`;
  if (location.hash === hash) trace(q);
  else location.hash = hash;
}

// ------------------------------------------------------------------------------ routing

/** Shows the admin page a `#admin...` hash names. */
export function routeAdmin(hash) {
  const [path, query] = hash.slice(1).split("?");
  const parts = path.split("/").map(decodeURIComponent);
  switch (parts[1]) {
    case undefined: case "": return dashboard();
    case "domains": return domains();
    case "domain": return domain(parts.slice(2).join("/"));
    case "users": return users();
    case "user": return user(parts.slice(2).join("/"));
    case "queue": return queuePage(new URLSearchParams(query || ""));
    case "trace": return trace(parts.slice(2).join("/"));
    default: return dashboard();
  }
}

export function initAdmin() {
  $("add-domain-form").addEventListener("submit", addDomain);
  $("dkim-form").addEventListener("submit", createKey);
  $("delete-domain").addEventListener("click", removeDomain);
  $("add-user-form").addEventListener("submit", addUser);
  $("quota-form").addEventListener("submit", saveQuota);
  $("toggle-admin").addEventListener("click", toggleAdmin);
  $("reset-form").addEventListener("submit", resetPassword);
  $("delete-user").addEventListener("click", deleteUser);
  $("queue-filter").addEventListener("submit", filterQueue);
  queuePages = new Pages("queue-prev", "queue-next", () => queuePage());
  $("trace-form").addEventListener("submit", traceSubmit);
}

// The MaiRust web UI: sign-in, inbox, reading a message, sign-out. Plain ES module, same
// origin as the API; mail data is only ever put into the page as text (textContent), and the
// HTML part is shown by the server's sanitized view in a sandboxed frame.

const API = "/api/v1";
const PAGE_SIZE = 50;

const $ = (id) => document.getElementById(id);

/** The signed-in session ({email, is_admin, csrf_token, ...}) or null. */
let session = null;
/** Cursors of the pages before the current one (the first page has none). */
let cursorStack = [];
let currentCursor = null;
let nextCursor = null;
/** The message being read. */
let current = null;
/** What to tell the user once the next view is shown (a view change clears the status line). */
let notice = "";

class HttpError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
  }
}

/** Calls the API; state changes carry the CSRF token the session handed out. */
async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && session) headers["X-CSRF-Token"] = session.csrf_token;
  const response = await fetch(API + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  let data = null;
  const type = response.headers.get("Content-Type") || "";
  if (type.includes("json")) data = await response.json().catch(() => null);
  if (!response.ok) throw new HttpError(response.status, data);
  return data;
}

function say(text) {
  $("status").textContent = text;
}

/** A message for people from an API failure. */
function explain(error) {
  if (error instanceof HttpError) {
    if (error.status === 401) return "Your session has ended. Please sign in again.";
    if (error.status === 404) return "That message no longer exists.";
    if (error.status === 429) return "Too many requests. Wait a moment and try again.";
    if (error.status >= 500) return "The server had a problem. Try again in a moment.";
    return error.message;
  }
  return "The server cannot be reached. Check your connection and try again.";
}

function show(view) {
  for (const id of ["sign-in-view", "inbox-view", "message-view", "admin-view"]) {
    $(id).hidden = id !== view;
  }
  $("account").hidden = view === "sign-in-view";
}

function showSignIn() {
  // Sent back here by a 401 while signed in: the session expired or was revoked.
  if (session) say("Your session has ended. Please sign in again.");
  session = null;
  current = null;
  show("sign-in-view");
  $("email").focus();
}

function formatSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
}

function formatDate(rfc3339) {
  const d = new Date(rfc3339);
  if (Number.isNaN(d.getTime())) return rfc3339;
  return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

async function loadInbox() {
  show("inbox-view");
  const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (currentCursor) query.set("cursor", currentCursor);
  let page;
  try {
    page = await api("GET", `/messages?${query}`);
  } catch (error) {
    if (error instanceof HttpError && error.status === 401) return showSignIn();
    say(explain(error));
    return;
  }
  nextCursor = page.next_cursor || null;
  const rows = $("message-rows");
  rows.replaceChildren();
  for (const item of page.items) {
    const tr = document.createElement("tr");
    tr.tabIndex = 0;
    tr.dataset.id = item.id;
    tr.className = item.seen ? "read" : "unread";
    tr.append(
      cell(item.from || "(no sender)", "from"),
      cell(item.subject || "(no subject)", "subject"),
      cell(formatDate(item.date), "date"),
      cell(formatSize(item.size), "size"),
      cell(item.has_attachments ? "📎" : "", "attach"),
    );
    if (item.has_attachments) tr.lastChild.title = "Has attachments";
    if (!item.seen) tr.setAttribute("aria-label", `Unread: ${item.subject || "(no subject)"}`);
    rows.append(tr);
  }
  const empty = page.items.length === 0 && !currentCursor;
  $("empty").hidden = !empty;
  $("messages").hidden = empty;
  $("prev-page").disabled = cursorStack.length === 0 && !currentCursor;
  $("next-page").disabled = !nextCursor;
}

async function openMessage(id) {
  let msg;
  try {
    msg = await api("GET", `/messages/${encodeURIComponent(id)}`);
  } catch (error) {
    if (error instanceof HttpError && error.status === 401) return showSignIn();
    say(explain(error));
    location.hash = "#inbox";
    return;
  }
  current = msg;
  show("message-view");
  $("msg-subject").textContent = msg.subject || "(no subject)";
  $("msg-from").textContent = msg.from;
  $("msg-to").textContent = msg.to.join(", ");
  $("msg-cc").textContent = msg.cc.join(", ");
  $("msg-cc").hidden = $("msg-cc").previousElementSibling.hidden = msg.cc.length === 0;
  $("msg-date").textContent = formatDate(msg.date);
  const text = $("msg-text");
  text.textContent = msg.text || "";
  // The HTML view, when there is one, is the message; the text part would repeat it.
  text.hidden = !msg.text || Boolean(msg.html);
  const frame = $("msg-html");
  if (msg.html) {
    frame.src = `${API}/messages/${encodeURIComponent(msg.id)}/html`;
    frame.hidden = false;
  } else {
    frame.removeAttribute("src");
    frame.hidden = true;
  }
  const list = $("msg-attachments");
  list.replaceChildren();
  msg.attachments.forEach((att, n) => {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = `${API}/messages/${encodeURIComponent(msg.id)}/attachments/${n}`;
    a.download = att.filename || `attachment-${n + 1}`;
    a.textContent = `${att.filename || `attachment ${n + 1}`} (${att.content_type}, ${formatSize(att.size)})`;
    li.append(a);
    list.append(li);
  });
  $("msg-attachments-section").hidden = msg.attachments.length === 0;
  if (!msg.seen) {
    // Opening a message reads it, as in any mail client.
    try {
      await api("PATCH", `/messages/${encodeURIComponent(msg.id)}`, { seen: true });
      msg.seen = true;
    } catch (error) {
      say(explain(error));
    }
  }
  updateSeenButton();
  $("msg-subject").tabIndex = -1;
  $("msg-subject").focus();
}

function updateSeenButton() {
  $("toggle-seen").textContent = current && current.seen ? "Mark as unread" : "Mark as read";
}

async function route() {
  if (!session) return showSignIn();
  const hash = location.hash;
  if (hash.startsWith("#message/")) return openMessage(decodeURIComponent(hash.slice(9)));
  if (hash === "#admin" && session.is_admin) return show("admin-view");
  return loadInbox();
}

function signedIn(info) {
  session = info;
  $("whoami").textContent = info.email;
  $("admin-link").hidden = !info.is_admin;
  cursorStack = [];
  currentCursor = null;
}

async function signIn(event) {
  event.preventDefault();
  const error = $("sign-in-error");
  error.textContent = "";
  const email = $("email").value.trim();
  const password = $("password").value;
  try {
    const info = await api("POST", "/session", { email, password });
    $("password").value = "";
    signedIn(info);
    say("");
    if (location.hash !== "#inbox") location.hash = "#inbox";
    else await route();
  } catch (e) {
    if (e instanceof HttpError && e.status === 401) error.textContent = "Wrong email or password.";
    else if (e instanceof HttpError && e.status === 429)
      error.textContent = "Too many sign-in attempts. Wait a few minutes and try again.";
    else if (e instanceof HttpError && e.status === 400)
      error.textContent = "Enter your email address and your password.";
    else error.textContent = explain(e);
  }
}

async function signOut() {
  try {
    await api("DELETE", "/session");
  } catch (error) {
    // An expired session is signed out already; anything else is worth saying.
    if (!(error instanceof HttpError && error.status === 401)) {
      say(explain(error));
      return;
    }
  }
  session = null;
  history.replaceState(null, "", location.pathname);
  showSignIn();
  say("You are signed out.");
}

async function toggleSeen() {
  if (!current) return;
  const seen = !current.seen;
  try {
    await api("PATCH", `/messages/${encodeURIComponent(current.id)}`, { seen });
    current.seen = seen;
    updateSeenButton();
    say(seen ? "Marked as read." : "Marked as unread.");
  } catch (error) {
    say(explain(error));
  }
}

async function deleteMessage() {
  if (!current) return;
  try {
    await api("DELETE", `/messages/${encodeURIComponent(current.id)}`);
    current = null;
    notice = "Message deleted.";
    location.hash = "#inbox";
  } catch (error) {
    say(explain(error));
  }
}

function openRow(target) {
  const tr = target.closest("tr[data-id]");
  if (tr) location.hash = `#message/${encodeURIComponent(tr.dataset.id)}`;
}

async function start() {
  $("sign-in-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", signOut);
  $("toggle-seen").addEventListener("click", toggleSeen);
  $("delete-message").addEventListener("click", deleteMessage);
  $("message-rows").addEventListener("click", (e) => openRow(e.target));
  $("message-rows").addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      openRow(e.target);
    }
  });
  $("next-page").addEventListener("click", () => {
    if (!nextCursor) return;
    cursorStack.push(currentCursor);
    currentCursor = nextCursor;
    loadInbox();
  });
  $("prev-page").addEventListener("click", () => {
    currentCursor = cursorStack.pop() || null;
    loadInbox();
  });
  window.addEventListener("hashchange", () => {
    say(notice);
    notice = "";
    route();
  });
  try {
    signedIn(await api("GET", "/session"));
  } catch {
    session = null;
  }
  await route();
}

start();

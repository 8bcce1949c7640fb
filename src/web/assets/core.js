// What every page of the web UI shares: the API client, the status line, views, and small
// DOM helpers. Mail data only ever reaches the page as text (textContent), never as markup.

export const API = "/api/v1";

export const $ = (id) => document.getElementById(id);

/** The signed-in session ({email, is_admin, csrf_token, ...}) or null, and what to say once the
 * next view is shown (a view change clears the status line). */
export const state = { session: null, notice: "" };

/** Called when a request finds the session gone (set by the app). */
let onSignedOut = () => {};
export function whenSignedOut(handler) {
  onSignedOut = handler;
}

export class HttpError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || (body && body.message) || `HTTP ${status}`);
    this.status = status;
  }
}

/** Calls the API; state changes carry the CSRF token the session handed out. A 401 while
 * signed in sends the page back to the sign-in form. */
export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && state.session) headers["X-CSRF-Token"] = state.session.csrf_token;
  const response = await fetch(API + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  let data = null;
  const type = response.headers.get("Content-Type") || "";
  if (type.includes("json")) data = await response.json().catch(() => null);
  if (!response.ok) {
    const error = new HttpError(response.status, data);
    if (response.status === 401 && state.session && path !== "/session") onSignedOut();
    throw error;
  }
  return data;
}

export function say(text) {
  $("status").textContent = text;
}

/** A message for people from an API failure. */
export function explain(error) {
  if (error instanceof HttpError) {
    if (error.status === 401) return "Your session has ended. Please sign in again.";
    if (error.status === 403) return `Not allowed: ${error.message}.`;
    if (error.status === 429) return "Too many requests. Wait a moment and try again.";
    if (error.status >= 500) return `The server had a problem: ${error.message}. Try again in a moment.`;
    return error.message;
  }
  return "The server cannot be reached. Check your connection and try again.";
}

/** Reports a failure on the status line; a 401 has already sent the page to the sign-in form. */
export function fail(error) {
  if (!(error instanceof HttpError && error.status === 401)) say(explain(error));
}

const VIEWS = ["sign-in-view", "inbox-view", "message-view", "compose-view", "settings-view", "admin-view"];

export function show(view) {
  for (const id of VIEWS) $(id).hidden = id !== view;
  $("account").hidden = view === "sign-in-view";
}

/** Moves the keyboard focus to a view's heading, so that screen readers announce it. */
export function focusHeading(element) {
  element.tabIndex = -1;
  element.focus();
}

export function formatSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
}

/** How long ago `value` (a time the API gave) was: "12 s", "5 min", "3 h", "2 d". */
export function formatAge(value, now = Date.now()) {
  const seconds = Math.max(0, Math.round((now - new Date(value).getTime()) / 1000));
  if (Number.isNaN(seconds)) return "";
  if (seconds < 60) return `${seconds} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h`;
  return `${Math.floor(seconds / 86400)} d`;
}

/** An address that may wrap after its `@` and its dots, never inside a word. */
export function address(text) {
  const span = el("span", { class: "address" });
  for (const part of String(text).split(/(?<=[@.])/)) {
    if (span.childNodes.length) span.append(document.createElement("wbr"));
    span.append(part);
  }
  return span;
}

/** A paperclip drawn in the page (an emoji shows as a box without an emoji font). */
export function paperclip() {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  for (const [k, v] of [["viewBox", "0 0 16 16"], ["width", "16"], ["height", "16"], ["aria-hidden", "true"],
    ["class", "icon"], ["focusable", "false"]]) svg.setAttribute(k, v);
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", "M10.5 4.5v6a2.5 2.5 0 0 1-5 0v-7a1.5 1.5 0 0 1 3 0v6.5a.5.5 0 0 1-1 0V4.5");
  for (const [k, v] of [["fill", "none"], ["stroke", "currentColor"], ["stroke-width", "1.3"],
    ["stroke-linecap", "round"]]) path.setAttribute(k, v);
  svg.append(path);
  return svg;
}

export function formatDate(value) {
  if (value === null || value === undefined || value === "") return "";
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) return String(value);
  return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

/** An element with text content and attributes; children are appended. */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name === "text") node.textContent = value;
    else if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children);
  return node;
}

/** A table cell; `label` names the column on narrow screens, where the header row is hidden. */
export function cell(content, className, label) {
  const td = el("td", { class: className, "data-label": label });
  if (content instanceof Node) td.append(content);
  else td.textContent = content;
  return td;
}

/** Cursor paging of an API listing, with its Previous and Next buttons. */
export class Pages {
  /** `load` redraws the listing at the current cursor. */
  constructor(prevId, nextId, load) {
    this.prevId = prevId;
    this.nextId = nextId;
    this.reset();
    $(nextId).addEventListener("click", () => {
      if (!this.next) return;
      this.before.push(this.cursor);
      this.cursor = this.next;
      load();
    });
    $(prevId).addEventListener("click", () => {
      this.cursor = this.before.pop() || null;
      load();
    });
  }

  /** Back to the first page. */
  reset() {
    this.before = [];
    this.cursor = null;
    this.next = null;
  }

  /** Whether the current page is the first. */
  get first() {
    return !this.cursor;
  }

  /** The query for the current page. */
  query(params) {
    const query = new URLSearchParams(params);
    if (this.cursor) query.set("cursor", this.cursor);
    return query;
  }

  /** Takes a page's answer and enables the buttons that lead somewhere. */
  loaded(page) {
    this.next = page.next_cursor || null;
    $(this.prevId).disabled = this.before.length === 0 && !this.cursor;
    $(this.nextId).disabled = !this.next;
  }
}

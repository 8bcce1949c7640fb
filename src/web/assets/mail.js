// Webmail: the folders, reading a message, moving it, writing one, and the password page.

import {
  API, $, api, cell, el, explain, fail, focusHeading, formatDate, formatSize, HttpError, Pages,
  paperclip, say, show, state,
} from "./core.js";

const PAGE_SIZE = 50;

const KNOWN = {
  INBOX: { hash: "#inbox", title: "Inbox", empty: "No mail yet.", who: "From" },
  Sent: { hash: "#sent", title: "Sent", empty: "Nothing sent yet. Write a message to see it here.", who: "To" },
  Drafts: { title: "Drafts", who: "To" },
};

/** How a folder is shown: its link, title, what an empty one says, and who the list names. */
function folderInfo(name) {
  const known = KNOWN[name] || {};
  return {
    hash: known.hash || `#folder/${encodeURIComponent(name)}`,
    title: known.title || name,
    empty: known.empty || "This folder is empty.",
    who: known.who || "From",
  };
}

/** The folder list with unread counts; the shown folder is marked as the current page. */
async function loadFolderLinks() {
  let folders;
  try {
    folders = (await api("GET", "/folders")).items;
  } catch (error) {
    return fail(error);
  }
  const list = $("folder-links");
  list.replaceChildren();
  for (const folder of folders) {
    const info = folderInfo(folder.name);
    const link = el("a", { href: info.hash, text: info.title });
    if (folder.unseen > 0) {
      link.append(el("span", { text: ` (${folder.unseen})`, "aria-hidden": "true" }),
        el("span", { class: "sr-only", text: `, ${folder.unseen} unread` }));
    }
    if (folder.name === shownFolder) link.setAttribute("aria-current", "page");
    list.append(el("li", {}, link));
  }
}

/** The folder on screen and where in it (set up by `initMail`). */
let shownFolder = "INBOX";
let pages = null;
/** The message being read. */
let current = null;

export function resetMailbox() {
  shownFolder = "INBOX";
  pages.reset();
  current = null;
}

export async function loadFolder(folder) {
  if (folder !== shownFolder) {
    resetMailbox();
    shownFolder = folder;
  }
  const info = folderInfo(folder);
  show("inbox-view");
  $("folder-actions").hidden = folder !== "Trash";
  loadFolderLinks();
  $("folder-title").textContent = info.title;
  $("who-column").textContent = info.who;
  $("empty").textContent = info.empty;
  const query = pages.query({ limit: String(PAGE_SIZE), folder });
  let page;
  try {
    page = await api("GET", `/messages?${query}`);
  } catch (error) {
    return fail(error);
  }
  pages.loaded(page);
  const rows = $("message-rows");
  rows.replaceChildren();
  for (const item of page.items) {
    const byRecipient = info.who === "To";
    const who = byRecipient ? item.to.join(", ") : item.from;
    const subject = item.subject || "(no subject)";
    // Unread shows as a mark and words too, not only as bold type.
    const from = cell(who || (byRecipient ? "(no recipient)" : "(no sender)"), "from");
    if (!item.seen) {
      from.prepend(el("span", { class: "unread-mark", "aria-hidden": "true", text: "●" }),
        el("span", { class: "sr-only", text: "Unread: " }));
    }
    const attach = cell("", "attach");
    if (item.has_attachments) {
      attach.append(paperclip(), el("span", { class: "sr-only", text: "Has attachments" }));
      attach.title = "Has attachments";
    }
    const tr = el("tr", { tabindex: "0", "data-id": item.id, class: item.seen ? "read" : "unread" },
      from, cell(subject, "subject"), cell(formatDate(item.date), "date"),
      cell(formatSize(item.size), "size"), attach);
    if (!item.seen) tr.setAttribute("aria-label", `Unread: ${subject}`);
    rows.append(tr);
  }
  const empty = page.items.length === 0 && pages.first;
  $("empty").hidden = !empty;
  $("messages").hidden = empty;
}

export async function openMessage(id) {
  let msg;
  try {
    msg = await api("GET", `/messages/${encodeURIComponent(id)}`);
  } catch (error) {
    if (error instanceof HttpError && error.status === 404) state.notice = "That message no longer exists.";
    else fail(error);
    if (!(error instanceof HttpError && error.status === 401)) location.hash = folderInfo(shownFolder).hash;
    return;
  }
  current = msg;
  show("message-view");
  const folder = msg.folder || shownFolder;
  $("back").href = folderInfo(folder).hash;
  $("back").textContent = `Back to ${folder === "INBOX" ? "the inbox" : folderInfo(folder).title}`;
  for (const button of document.querySelectorAll("button[data-move]")) {
    button.hidden = button.dataset.move === folder;
  }
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
  showHtml(msg, false);
  const list = $("msg-attachments");
  list.replaceChildren();
  msg.attachments.forEach((att, n) => {
    const name = att.filename || `attachment ${n + 1}`;
    list.append(el("li", {}, el("a", {
      href: `${API}/messages/${encodeURIComponent(msg.id)}/attachments/${n}`,
      download: att.filename || `attachment-${n + 1}`,
      text: `${name} (${att.content_type}, ${formatSize(att.size)})`,
    })));
  });
  $("msg-attachments-section").hidden = msg.attachments.length === 0;
  if (!msg.seen) {
    // Opening a message reads it, as in any mail client.
    try {
      await api("PATCH", `/messages/${encodeURIComponent(msg.id)}`, { seen: true });
      msg.seen = true;
    } catch (error) {
      fail(error);
    }
  }
  updateSeenButton();
  focusHeading($("msg-subject"));
}

/** Shows the sanitized HTML part in the sandboxed frame; remote images stay out until the
 * reader allows them for this message (loading one tells the sender the mail was read). */
async function showHtml(msg, allowRemote) {
  const frame = $("msg-html");
  const bar = $("remote-images");
  bar.hidden = true;
  if (!msg.html) {
    frame.removeAttribute("src");
    frame.hidden = true;
    return;
  }
  const url = `${API}/messages/${encodeURIComponent(msg.id)}/html${allowRemote ? "?remote_images=allow" : ""}`;
  frame.src = url;
  frame.hidden = false;
  if (allowRemote) return;
  try {
    const response = await fetch(url, { method: "HEAD", credentials: "same-origin" });
    const blocked = Number(response.headers.get("X-Remote-Images-Blocked") || "0");
    if (blocked > 0 && current === msg) {
      $("remote-images-text").textContent = blocked === 1
        ? "1 remote image is blocked to protect your privacy."
        : `${blocked} remote images are blocked to protect your privacy.`;
      bar.hidden = false;
    }
  } catch {
    // Without the count the images simply stay blocked.
  }
}

function updateSeenButton() {
  $("toggle-seen").textContent = current && current.seen ? "Mark as unread" : "Mark as read";
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
    fail(error);
  }
}

async function deleteMessage() {
  if (!current) return;
  try {
    await api("DELETE", `/messages/${encodeURIComponent(current.id)}`);
    current = null;
    state.notice = "Message deleted.";
    location.hash = folderInfo(shownFolder).hash;
  } catch (error) {
    fail(error);
  }
}

async function moveMessage(to) {
  if (!current) return;
  try {
    await api("PATCH", `/messages/${encodeURIComponent(current.id)}`, { folder: to });
    current = null;
    state.notice = `Moved to ${folderInfo(to).title}.`;
    location.hash = folderInfo(shownFolder).hash;
  } catch (error) {
    fail(error);
  }
}

async function emptyFolder() {
  if (!confirm(`Delete every message in ${folderInfo(shownFolder).title} for good?`)) return;
  try {
    await api("DELETE", `/folders/${encodeURIComponent(shownFolder)}/messages`);
    say(`${folderInfo(shownFolder).title} is empty.`);
    pages.reset();
    await loadFolder(shownFolder);
  } catch (error) {
    fail(error);
  }
}

function openRow(target) {
  const tr = target.closest("tr[data-id]");
  if (tr) location.hash = `#message/${encodeURIComponent(tr.dataset.id)}`;
}

// ------------------------------------------------------------------------------ compose

/** Addresses typed into one field, split at commas, semicolons and spaces. */
function addresses(id) {
  return $(id).value.split(/[,;\s]+/).map((a) => a.trim()).filter(Boolean);
}

function base64(buffer) {
  const bytes = new Uint8Array(buffer);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

export function showCompose() {
  show("compose-view");
  $("compose-from").textContent = state.session.email;
  $("compose-error").textContent = "";
  focusHeading($("compose-title"));
}

async function send(event) {
  event.preventDefault();
  const error = $("compose-error");
  error.textContent = "";
  const to = addresses("compose-to");
  const cc = addresses("compose-cc");
  const bcc = addresses("compose-bcc");
  if (to.length + cc.length + bcc.length === 0) {
    error.textContent = "Enter at least one recipient in To, Cc or Bcc.";
    $("compose-to").focus();
    return;
  }
  const button = $("compose-send");
  button.disabled = true;
  try {
    const attachments = [];
    for (const file of $("compose-files").files) {
      attachments.push({
        filename: file.name,
        content_type: file.type || "application/octet-stream",
        content_base64: base64(await file.arrayBuffer()),
      });
    }
    await api("POST", "/send", {
      from: state.session.email,
      to, cc, bcc,
      subject: $("compose-subject").value,
      text: $("compose-text").value,
      attachments,
    });
    $("compose-form").reset();
    state.notice = "Message sent.";
    location.hash = "#sent";
  } catch (e) {
    if (e instanceof HttpError && e.status === 413) {
      error.textContent = "The message is too large. Remove an attachment or send smaller files.";
    } else if (!(e instanceof HttpError && e.status === 401)) {
      error.textContent = `Not sent: ${explain(e)}`;
    }
  } finally {
    button.disabled = false;
  }
}

// ------------------------------------------------------------------------------ password

export function showSettings() {
  show("settings-view");
  $("password-error").textContent = "";
  focusHeading($("settings-title"));
}

async function changePassword(event, signedIn) {
  event.preventDefault();
  const error = $("password-error");
  error.textContent = "";
  const current = $("current-password").value;
  const fresh = $("new-password").value;
  if (fresh !== $("repeat-password").value) {
    error.textContent = "The new passwords do not match.";
    $("repeat-password").focus();
    return;
  }
  const email = state.session.email;
  try {
    await api("PUT", `/users/${encodeURIComponent(email)}/password`,
      { password: fresh, current_password: current });
  } catch (e) {
    if (e instanceof HttpError && e.status === 403) error.textContent = "The current password is wrong.";
    else if (!(e instanceof HttpError && e.status === 401)) error.textContent = explain(e);
    return;
  }
  $("password-form").reset();
  // The change ends every session, this one too: sign in again with the new password.
  try {
    const info = await api("POST", "/session", { email, password: fresh });
    signedIn(info);
    say("Your password is changed. Your other sessions and API tokens are signed out.");
  } catch (e) {
    say(`Your password is changed; sign in again with it. (${explain(e)})`);
  }
}

/** Wires the webmail's controls; `signedIn` is the app's handler of a new session. */
export function initMail(signedIn) {
  $("toggle-seen").addEventListener("click", toggleSeen);
  $("delete-message").addEventListener("click", deleteMessage);
  for (const button of document.querySelectorAll("button[data-move]")) {
    button.addEventListener("click", () => moveMessage(button.dataset.move));
  }
  $("empty-folder").addEventListener("click", emptyFolder);
  $("message-rows").addEventListener("click", (e) => openRow(e.target));
  $("message-rows").addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      openRow(e.target);
    }
  });
  pages = new Pages("prev-page", "next-page", () => loadFolder(shownFolder));
  $("allow-remote-images").addEventListener("click", () => {
    if (current) showHtml(current, true);
  });
  $("compose-form").addEventListener("submit", send);
  $("password-form").addEventListener("submit", (e) => changePassword(e, signedIn));
}

// The MaiRust web UI: sign-in and the routes of the webmail and the admin console. Plain ES
// modules, same origin as the API.

import { $, api, explain, HttpError, say, show, state, whenSignedOut } from "./core.js";
import { initMail, loadFolder, openMessage, resetMailbox, showCompose, showSettings } from "./mail.js";
import { clearAdmin, initAdmin, routeAdmin } from "./admin.js";

function showSignIn() {
  // Sent back here by a 401 while signed in: the session expired or was revoked.
  if (state.session) say("Your session has ended. Please sign in again.");
  state.session = null;
  resetMailbox();
  clearAdmin();
  $("message-rows").replaceChildren();
  show("sign-in-view");
  $("email").focus();
}

async function route() {
  if (!state.session) return showSignIn();
  const hash = location.hash;
  if (hash.startsWith("#message/")) return openMessage(decodeURIComponent(hash.slice(9)));
  if (hash === "#sent") return loadFolder("Sent");
  if (hash.startsWith("#folder/")) return loadFolder(decodeURIComponent(hash.slice(8)));
  if (hash === "#compose") return showCompose();
  if (hash === "#settings") return showSettings();
  // Plain users get the admin pages too, and with them the server's refusal.
  if (hash === "#admin" || hash.startsWith("#admin/") || hash.startsWith("#admin?")) return routeAdmin(hash);
  return loadFolder("INBOX");
}

function signedIn(info) {
  state.session = info;
  $("whoami").textContent = info.email;
  $("admin-link").hidden = !info.is_admin;
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
    resetMailbox();
    say("");
    if (location.hash === "" || location.hash === "#") location.hash = "#inbox";
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
  state.session = null;
  history.replaceState(null, "", location.pathname);
  showSignIn();
  say("You are signed out.");
}

async function start() {
  whenSignedOut(showSignIn);
  $("sign-in-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", signOut);
  initMail(signedIn);
  initAdmin();
  window.addEventListener("hashchange", () => {
    say(state.notice);
    state.notice = "";
    route();
  });
  try {
    signedIn(await api("GET", "/session"));
  } catch {
    state.session = null;
  }
  await route();
}

start();

"""The web UI in a real browser: Debian's Chromium driven by Selenium against an all-in-one
server. Sign-in (and its error), the inbox, reading a text and an HTML mail, sign-out."""

import contextlib
import re
import time
import shutil
import uuid
from pathlib import Path

import pytest
import requests

from conftest import ADMIN_EMAIL, DOMAIN, USER_PASSWORD, setup_domain_and_user, simple_message
from test_delivery import REMOTE, delivery_overrides, receiver  # noqa: F401 (fixture)
from test_web import web_node  # noqa: F401 (fixture)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
BOB = f"bob@{DOMAIN}"
COOKIE = "mairust_session"
WAIT = 15
SHOTS = Path(__file__).parent / "screenshots"

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (tests/requirements.txt)")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
    pytest.skip("Debian's chromium and chromium-driver are not installed (/usr/bin/chromium, "
                "/usr/bin/chromedriver); .ci/run installs them", allow_module_level=True)


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--window-size=1280,900", f"--user-data-dir={tmp_path / 'chrome'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.add_experimental_option("prefs", {
        "download.default_directory": str(tmp_path / "downloads"),
        "download.prompt_for_download": False,
    })
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(WAIT)
    yield driver
    driver.quit()


def wait(driver, condition):
    # A list the page redraws meanwhile leaves stale elements behind: look again.
    return WebDriverWait(driver, WAIT, ignored_exceptions=[StaleElementReferenceException]).until(condition)


def click_link(driver, text):
    """Clicks the link with this text, looking again if the page redrew it meanwhile (the
    folder list redraws when its counts change)."""
    def click(d):
        d.find_element(By.LINK_TEXT, text).click()
        return True
    wait(driver, click)


def visible(driver, element_id):
    return wait(driver, EC.visibility_of_element_located((By.ID, element_id)))


def csp_violations(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser")
            if "Content Security Policy" in e["message"] or "Content-Security-Policy" in e["message"]]


def axe_source() -> str:
    """axe-core 4 as the PyPI package axe-playwright-python bundles it (only its script is
    used, run through Selenium in Debian's Chromium)."""
    import axe_playwright_python

    return (Path(axe_playwright_python.__file__).parent / "axe.min.js").read_text()


def axe_violations(driver) -> list[str]:
    """What axe-core finds on the page as shown: WCAG 2.1 A and AA and axe's best practices."""
    driver.execute_script(axe_source())
    driver.set_script_timeout(60)
    result = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        axe.run(document, {runOnly: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']})
          .then((r) => done(r.violations.map((v) => `${v.id} (${v.impact}): ${v.help}: ` +
                v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(', '))))
          .catch((e) => done([`axe failed: ${e}`]));""")
    return result


def screenshot(driver, name: str) -> None:
    """Desktop and 360 px pictures of the page, for people to look at; at 360 px nothing may
    need sideways scrolling, and axe-core finds nothing at either width."""
    SHOTS.mkdir(exist_ok=True)
    violations = axe_violations(driver)
    assert violations == [], f"{name}: axe-core: {violations}"
    # Every control on the page has a label a screen reader can read out.
    unlabelled = driver.execute_script("""
        return [...document.querySelectorAll('input, select, textarea, button')]
          .filter((e) => e.offsetParent !== null)
          .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                         && !(e.tagName === 'BUTTON' && e.textContent.trim()))
          .map((e) => e.outerHTML);""")
    assert unlabelled == [], f"{name}: controls without a label: {unlabelled}"
    driver.save_screenshot(str(SHOTS / f"{name}-desktop.png"))
    driver.set_window_size(360, 800)
    try:
        wait(driver, lambda d: d.execute_script("return window.innerWidth") <= 360)
        driver.save_screenshot(str(SHOTS / f"{name}-360.png"))
        overflow = driver.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{name}: {overflow} px wider than a 360 px screen"
        violations = axe_violations(driver)
        assert violations == [], f"{name} at 360 px: axe-core: {violations}"
    finally:
        driver.set_window_size(1280, 900)


def sign_in(driver, email, password):
    visible(driver, "email").clear()
    driver.find_element(By.ID, "email").send_keys(email)
    driver.find_element(By.ID, "password").clear()
    driver.find_element(By.ID, "password").send_keys(password, Keys.ENTER)


def html_message(subject: str) -> bytes:
    boundary = uuid.uuid4().hex
    return (
        f"From: Alice <alice@remote.test>\r\nTo: {BOB}\r\nSubject: {subject}\r\n"
        f"Date: Tue, 24 Nov 2026 11:00:00 +0000\r\nMessage-ID: <{boundary}@remote.test>\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary={boundary}\r\n\r\n"
        f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThe plain version.\r\n"
        f"--{boundary}\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        "<html><body><p id=\"greeting\">Hello in <b>HTML</b>.</p>"
        "<script>window.top.pwned = 1; parent.document.title = 'pwned';</script>"
        "<img src=\"x\" onerror=\"parent.pwned = 2\">"
        "<img id=\"pixel\" src=\"https://images.remote.test/pixel.gif\" alt=\"tracking pixel\"></body></html>\r\n"
        f"--{boundary}--\r\n"
    ).encode()


def test_sign_in_read_mail_and_sign_out_in_chromium(server, browser):
    srv = server()
    setup_domain_and_user(srv)
    driver = browser

    driver.get(srv.base_url + "/")
    # Nobody signed in: the form, and an error written for people on a wrong password.
    sign_in(driver, BOB, "not-the-password")
    error = driver.find_element(By.ID, "sign-in-error")
    wait(driver, lambda d: error.text == "Wrong email or password.")
    screenshot(driver, "sign-in")
    assert error.get_attribute("aria-live") and not driver.find_element(By.ID, "inbox-view").is_displayed()

    # Signed in with an empty mailbox: the empty state.
    sign_in(driver, BOB, USER_PASSWORD)
    empty = visible(driver, "empty")
    assert empty.text == "No mail yet."
    screenshot(driver, "inbox-empty")
    assert driver.find_element(By.ID, "whoami").text == BOB
    assert not driver.find_element(By.ID, "admin-link").is_displayed()

    # Mail over SMTP shows up in the inbox, unread: a mark and words for screen readers, the
    # sender and subject in bold (not the whole row).
    code, _ = srv.send(BOB, simple_message("Lunch on Friday?", "Shall we meet at noon?\r\n"))
    assert code == 250
    driver.refresh()
    row = wait(driver, EC.visibility_of_element_located((By.CSS_SELECTOR, "#message-rows tr")))
    assert "Lunch on Friday?" in row.text and "alice@remote.test" in row.text
    assert row.find_element(By.CSS_SELECTOR, ".unread-mark").is_displayed()
    assert row.find_element(By.CSS_SELECTOR, "td.from .sr-only").get_attribute("textContent") == "Unread: "
    weight = lambda cls: int(row.find_element(By.CSS_SELECTOR, f"td.{cls}").value_of_css_property("font-weight"))
    assert weight("subject") >= 700 and weight("from") >= 700 and weight("date") < 700
    assert not driver.find_element(By.ID, "empty").is_displayed()
    screenshot(driver, "inbox")

    # Enter on the row opens it: headers and the text; it is read now.
    row.send_keys(Keys.ENTER)
    assert visible(driver, "msg-subject").text == "Lunch on Friday?"
    wait(driver, lambda d: d.find_element(By.ID, "msg-text").text == "Shall we meet at noon?")
    assert "alice@remote.test" in driver.find_element(By.ID, "msg-from").text
    assert not driver.find_element(By.ID, "msg-html").is_displayed()
    wait(driver, lambda d: d.find_element(By.ID, "toggle-seen").text == "Mark as unread")
    items = srv.api(BOB, USER_PASSWORD).get("/api/v1/messages").json()["items"]
    assert [m["seen"] for m in items] == [True]
    driver.find_element(By.ID, "back").click()
    row = wait(driver, EC.visibility_of_element_located((By.CSS_SELECTOR, "#message-rows tr")))
    wait(driver, lambda d: int(d.find_element(By.CSS_SELECTOR, "#message-rows tr td.subject")
                                .value_of_css_property("font-weight")) < 700)
    assert driver.find_elements(By.CSS_SELECTOR, "#message-rows .unread-mark") == []

    # An HTML mail: shown in the sandboxed frame, its script gone and nothing of it ran.
    title = driver.title
    code, _ = srv.send(BOB, html_message("Newsletter"))
    assert code == 250
    driver.refresh()
    rows = wait(driver, lambda d: [r for r in d.find_elements(By.CSS_SELECTOR, "#message-rows tr")
                                   if "Newsletter" in r.text])
    rows[0].click()
    frame = visible(driver, "msg-html")
    assert frame.get_attribute("sandbox") == ""
    driver.switch_to.frame(frame)
    # The sanitizer keeps the text and markup, not the attributes a script could use.
    greeting = wait(driver, EC.presence_of_element_located((By.TAG_NAME, "p")))
    assert greeting.text == "Hello in HTML.", driver.page_source
    assert driver.find_elements(By.TAG_NAME, "script") == []
    assert "onerror" not in driver.page_source
    driver.switch_to.default_content()
    assert driver.execute_script("return window.pwned === undefined") is True
    screenshot(driver, "message-html")
    assert driver.title == title

    # Sign-out: back to the form, and the old cookie opens nothing any more.
    cookie = driver.get_cookie(COOKIE)
    assert cookie and cookie["httpOnly"]
    api_with_cookie = requests.get(srv.base_url + "/api/v1/messages",
                                   cookies={COOKIE: cookie["value"]}, timeout=15)
    assert api_with_cookie.status_code == 200
    driver.find_element(By.ID, "sign-out").click()
    visible(driver, "sign-in-form")
    assert driver.find_element(By.ID, "status").text == "You are signed out."
    assert not driver.find_element(By.ID, "inbox-view").is_displayed()
    r = requests.get(srv.base_url + "/api/v1/messages", cookies={COOKIE: cookie["value"]}, timeout=15)
    assert r.status_code == 401, r.text
    driver.refresh()
    visible(driver, "sign-in-form")

    assert csp_violations(driver) == []


def attachment_message(subject: str) -> bytes:
    boundary = uuid.uuid4().hex
    return (
        f"From: Carol <carol@remote.test>\r\nTo: {BOB}\r\nSubject: {subject}\r\n"
        f"Date: Tue, 24 Nov 2026 12:00:00 +0000\r\nMessage-ID: <{boundary}@remote.test>\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary={boundary}\r\n\r\n"
        f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThe report is attached.\r\n"
        f"--{boundary}\r\nContent-Type: text/csv; name=report.csv\r\n"
        "Content-Disposition: attachment; filename=report.csv\r\n\r\na,b\r\n1,2\r\n"
        f"--{boundary}--\r\n"
    ).encode()


def test_pages_attachments_read_flag_delete_and_the_admin_link(server, browser):
    srv = server()
    setup_domain_and_user(srv)
    driver = browser
    # 51 mails: one more than a page.
    with contextlib.closing(srv.smtp()) as s:
        for i in range(50):
            s.sendmail("alice@remote.test", [BOB], simple_message(f"Bulk {i:02d}"))
    assert srv.send(BOB, attachment_message("Quarterly report"))[0] == 250

    # An admin sees the way to the console.
    srv.api().add_user(f"root@{DOMAIN}", USER_PASSWORD, is_admin=True)
    driver.get(srv.base_url + "/")
    sign_in(driver, f"root@{DOMAIN}", USER_PASSWORD)
    link = visible(driver, "admin-link")
    link.click()
    assert visible(driver, "dashboard-panel").find_element(By.TAG_NAME, "h2").text == "Dashboard"
    driver.find_element(By.ID, "sign-out").click()
    visible(driver, "sign-in-form")

    sign_in(driver, BOB, USER_PASSWORD)
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#message-rows tr")) == 50)
    first_page = [r.text for r in driver.find_elements(By.CSS_SELECTOR, "#message-rows tr")]
    assert driver.find_element(By.ID, "prev-page").get_attribute("disabled")
    driver.find_element(By.ID, "next-page").click()
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#message-rows tr")) == 1)
    last = driver.find_element(By.CSS_SELECTOR, "#message-rows tr").text
    assert last not in first_page
    assert driver.find_element(By.ID, "next-page").get_attribute("disabled")
    driver.find_element(By.ID, "prev-page").click()
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#message-rows tr")) == 50)
    assert [r.text for r in driver.find_elements(By.CSS_SELECTOR, "#message-rows tr")] == first_page

    # The attachment mark, and the attachment as a download link that works with the session.
    row = [r for r in driver.find_elements(By.CSS_SELECTOR, "#message-rows tr") if "Quarterly report" in r.text]
    if not row:
        driver.find_element(By.ID, "next-page").click()
        wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#message-rows tr")) == 1)
        row = driver.find_elements(By.CSS_SELECTOR, "#message-rows tr")
    # A paperclip drawn in the page, not an emoji (a box without an emoji font).
    mark = row[0].find_element(By.CSS_SELECTOR, "td.attach")
    assert mark.find_element(By.TAG_NAME, "svg").is_displayed()
    assert mark.get_attribute("textContent") == "Has attachments", mark.get_attribute("innerHTML")
    row[0].click()
    link = wait(driver, EC.visibility_of_element_located((By.CSS_SELECTOR, "#msg-attachments a")))
    assert "report.csv" in link.text
    cookie = driver.get_cookie(COOKIE)["value"]
    r = requests.get(link.get_attribute("href"), cookies={COOKIE: cookie}, timeout=15)
    assert r.status_code == 200 and r.content.replace(b"\r\n", b"\n") == b"a,b\n1,2", r.content
    screenshot(driver, "message-attachment")
    message_id = driver.execute_script("return location.hash").split("/", 1)[1]
    bob = srv.api(BOB, USER_PASSWORD)
    wait(driver, lambda d: bob.get(f"/api/v1/messages/{message_id}").json()["seen"] is True)

    # Mark as unread, then delete: both reach the server.
    toggle = driver.find_element(By.ID, "toggle-seen")
    assert toggle.text == "Mark as unread"
    toggle.click()
    wait(driver, lambda d: toggle.text == "Mark as read")
    assert bob.get(f"/api/v1/messages/{message_id}").json()["seen"] is False
    driver.find_element(By.ID, "delete-message").click()
    visible(driver, "inbox-view")
    wait(driver, lambda d: "deleted" in d.find_element(By.ID, "status").text)
    assert bob.get(f"/api/v1/messages/{message_id}").status_code == 404

    # A password reset ends the session: the next view is the form, saying why.
    r = srv.api().put(f"/api/v1/users/{BOB}/password", json={"password": "another-password-456"})
    assert r.status_code in (200, 204), r.text
    driver.execute_script("location.hash = '#inbox-again'")
    visible(driver, "sign-in-form")
    assert driver.find_element(By.ID, "status").text == "Your session has ended. Please sign in again."
    assert csp_violations(driver) == []


def open_row(driver, text):
    """Opens the mailbox row containing `text`. Going back to the list shows the rows drawn
    before until the new page arrives, so a row found early may be replaced: look again."""
    def click(d):
        rows = [r for r in d.find_elements(By.CSS_SELECTOR, "#message-rows tr") if text in r.text]
        if rows:
            rows[0].click()
        return bool(rows)
    WebDriverWait(driver, WAIT, ignored_exceptions=[StaleElementReferenceException]).until(click)


def click_button(driver, form_id):
    driver.find_element(By.CSS_SELECTOR, f"#{form_id} button[type=submit]").click()


def status_says(driver, text):
    wait(driver, lambda d: text in d.find_element(By.ID, "status").text)


def accept_confirmation(driver):
    wait(driver, EC.alert_is_present())
    driver.switch_to.alert.accept()


def test_the_admin_console_and_webmail_end_to_end_through_a_web_node(server, receiver, web_node, browser, tmp_path):
    """The issue's walk-through, through a web-only node in front of the API: the admin sets
    up a domain, its DKIM key and a user; the user reads mail (attachment, HTML with a remote
    image) and sends mail with an attachment to a deferring receiver; the admin finds it in
    the queue, retries it and traces it; a plain user is refused the admin pages."""
    rcv = receiver()
    rcv.tempfail_left = 1
    srv = server(delivery_overrides(relay_host=f"127.0.0.1:{rcv.port}", retry_intervals=["1h"]))
    web = web_node(srv.base_url)
    driver = browser
    admin_email, admin_password = srv.admin

    # The admin: the dashboard shows this node and its partitions.
    driver.get(web.base_url + "/")
    sign_in(driver, admin_email, admin_password)
    visible(driver, "admin-link").click()
    wait(driver, lambda d: "this node" in d.find_element(By.ID, "dash-member-rows").text)
    assert "All 64 queue partitions have an owner." == driver.find_element(By.ID, "dash-unowned").text
    assert "Accepted" in driver.find_element(By.ID, "dash-hour").text
    assert not driver.find_element(By.ID, "dash-warnings").is_displayed()
    screenshot(driver, "admin-dashboard")

    # A domain, then its DKIM key: the DNS records to publish, as the API has them.
    driver.find_element(By.LINK_TEXT, "Domains").click()
    visible(driver, "new-domain").send_keys(DOMAIN, Keys.ENTER)
    wait(driver, lambda d: d.find_element(By.ID, "domain-title").text == DOMAIN)
    status_says(driver, f"Domain {DOMAIN} added")
    wait(driver, lambda d: d.find_element(By.ID, "dkim-empty").is_displayed())
    driver.find_element(By.ID, "dkim-selector").send_keys("ui1")
    click_button(driver, "dkim-form")
    status_says(driver, "DKIM key ui1 created")
    dns = srv.api().get(f"/api/v1/domains/{DOMAIN}/dns").json()["items"]
    dkim = next(r for r in dns if r["name"] == f"ui1._domainkey.{DOMAIN}")
    # RSA by default: over 255 bytes, so shown as the quoted strings a zone file takes.
    assert len(dkim["value_strings"]) == 2, dkim
    zone_form = " ".join(f'"{part}"' for part in dkim["value_strings"])
    wait(driver, lambda d: zone_form in d.find_element(By.ID, "dns-rows").text)
    shown = driver.find_element(By.ID, "dns-rows").text
    assert "MX" in shown and "v=spf1" in shown and f"_dmarc.{DOMAIN}" in shown
    assert "signs new mail" in driver.find_element(By.ID, "dkim-rows").text
    screenshot(driver, "admin-domain")

    # A user with a 50 MB quota.
    driver.find_element(By.LINK_TEXT, "Users").click()
    visible(driver, "new-user-email").send_keys(BOB)
    driver.find_element(By.ID, "new-user-password").send_keys(USER_PASSWORD)
    driver.find_element(By.ID, "new-user-quota").send_keys("50")
    click_button(driver, "add-user-form")
    status_says(driver, f"User {BOB} added.")
    wait(driver, lambda d: "0 B of 50.0 MB" in d.find_element(By.ID, "user-rows").text)
    screenshot(driver, "admin-users")
    driver.find_element(By.ID, "sign-out").click()

    # The user: mail over SMTP with an attachment, and an HTML mail with a remote image.
    assert srv.send(BOB, attachment_message("Quarterly report"))[0] == 250
    assert srv.send(BOB, html_message("Newsletter"))[0] == 250
    sign_in(driver, BOB, USER_PASSWORD)
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#message-rows tr")) == 2)
    assert not driver.find_element(By.ID, "admin-link").is_displayed()
    row = next(r for r in driver.find_elements(By.CSS_SELECTOR, "#message-rows tr") if "Quarterly" in r.text)
    row.send_keys(Keys.ENTER)
    link = wait(driver, EC.visibility_of_element_located((By.CSS_SELECTOR, "#msg-attachments a")))
    link.click()
    downloaded = tmp_path / "downloads" / "report.csv"
    wait(driver, lambda d: downloaded.exists() and downloaded.read_bytes().replace(b"\r\n", b"\n") == b"a,b\n1,2")

    driver.find_element(By.ID, "back").click()
    open_row(driver, "Newsletter")
    notice = visible(driver, "remote-images")
    assert notice.text.startswith("1 remote image is blocked")
    frame = visible(driver, "msg-html")
    driver.switch_to.frame(frame)
    wait(driver, EC.presence_of_element_located((By.TAG_NAME, "p")))
    assert "images.remote.test" not in driver.page_source and "<script" not in driver.page_source
    driver.switch_to.default_content()
    screenshot(driver, "message-remote-images-blocked")
    driver.find_element(By.ID, "allow-remote-images").click()
    wait(driver, lambda d: "remote_images=allow" in d.find_element(By.ID, "msg-html").get_attribute("src"))
    driver.switch_to.frame(driver.find_element(By.ID, "msg-html"))
    pixel = wait(driver, EC.presence_of_element_located((By.CSS_SELECTOR, "img[alt='tracking pixel']")))
    assert pixel.get_attribute("src") == "https://images.remote.test/pixel.gif"
    driver.switch_to.default_content()
    assert not driver.find_element(By.ID, "remote-images").is_displayed()

    # Writing: a bad address gets a clear error; then the mail leaves with its attachment.
    driver.find_element(By.LINK_TEXT, "Write").click()
    visible(driver, "compose-to").send_keys("not an address")
    driver.find_element(By.ID, "compose-subject").send_keys("Slides")
    click_button(driver, "compose-form")
    error = driver.find_element(By.ID, "compose-error")
    wait(driver, lambda d: "is not a valid email address" in error.text)
    screenshot(driver, "compose-error")
    slides = tmp_path / "slides.txt"
    slides.write_text("slide 1\nslide 2\n")
    driver.find_element(By.ID, "compose-to").clear()
    driver.find_element(By.ID, "compose-to").send_keys(f"tempfail@{REMOTE}")
    driver.find_element(By.ID, "compose-text").send_keys("The slides for Friday.")
    driver.find_element(By.ID, "compose-files").send_keys(str(slides))
    click_button(driver, "compose-form")
    status_says(driver, "Message sent.")
    wait(driver, lambda d: d.find_element(By.ID, "folder-title").text == "Sent")
    sent = wait(driver, EC.visibility_of_element_located((By.CSS_SELECTOR, "#message-rows tr")))
    assert "Slides" in sent.text and f"tempfail@{REMOTE}" in sent.text and sent.find_elements(By.CSS_SELECTOR, "td.attach svg")
    screenshot(driver, "sent")

    # A plain user opening an admin page gets the server's refusal, not just a hidden link.
    driver.get(web.base_url + "/#admin/users")
    denied = visible(driver, "admin-denied")
    assert "for administrators" in denied.text
    assert driver.find_elements(By.CSS_SELECTOR, "#user-rows tr") == []
    cookie = driver.get_cookie(COOKIE)["value"]
    r = requests.get(web.base_url + "/api/v1/users", cookies={COOKIE: cookie}, timeout=15)
    assert r.status_code == 403, r.text
    screenshot(driver, "admin-denied")
    driver.find_element(By.ID, "sign-out").click()

    # The admin finds the deferred mail in the queue, retries it, and it is delivered signed.
    sign_in(driver, admin_email, admin_password)
    driver.get(web.base_url + "/#admin/queue")
    visible(driver, "queue-recipient").send_keys("tempfail")
    for _ in range(30):
        click_button(driver, "queue-filter")
        time.sleep(0.5)  # the table is drawn anew after each filter
        if "deferred" in driver.find_element(By.ID, "queue-rows").text:
            break
    (row,) = driver.find_elements(By.CSS_SELECTOR, "#queue-rows tr")
    assert "deferred" in row.text and "451" in row.text and BOB in row.text, row.text
    assert rcv.messages == []
    # How long it has waited; addresses wrap after @ and dots, never inside a word.
    headers = [th.text for th in driver.find_elements(By.CSS_SELECTOR, "#queue-table thead th")]
    assert headers[:3] == ["Recipient", "Sender", "Age"], headers
    assert re.fullmatch(r"\d+ (s|min)", row.find_element(By.CSS_SELECTOR, "td.age").text), row.text
    recipient = row.find_element(By.CSS_SELECTOR, "td:first-child .address")
    assert recipient.get_attribute("innerHTML").count("<wbr>") == 2, recipient.get_attribute("innerHTML")
    assert recipient.value_of_css_property("overflow-wrap") == "normal"
    screenshot(driver, "admin-queue")
    row.find_element(By.XPATH, ".//button[text()='Retry now']").click()
    status_says(driver, f"Retrying delivery to tempfail@{REMOTE} now.")
    (delivered,) = rcv.wait(1)
    content = delivered["content"].decode()
    assert "s=ui1;" in content.replace(" ", "").replace("\r\n\t", "") and "slides.txt" in content
    for _ in range(30):
        click_button(driver, "queue-filter")
        time.sleep(0.5)
        if "delivered" in driver.find_element(By.ID, "queue-rows").text:
            break
    assert "delivered" in driver.find_element(By.ID, "queue-rows").text

    # The trace: accepted, queued, the deferral, the delivery.
    driver.find_element(By.LINK_TEXT, f"tempfail@{REMOTE}").click()
    timeline = wait(driver, EC.visibility_of_element_located((By.CSS_SELECTOR, "#trace-result .timeline")))
    wait(driver, lambda d: "delivered for" in timeline.text)
    text = timeline.text
    assert "accepted from " + BOB in text and f"queued for tempfail@{REMOTE}" in text
    assert text.index("deferred for") < text.index("delivered for"), text
    assert "Now: delivered after 2 attempts" in text
    screenshot(driver, "admin-trace")
    assert csp_violations(driver) == []


def test_the_dashboard_says_what_to_fix_before_going_live(server, browser):
    """A container's host name (the container id) and a documented example password are
    shown loudly on the admin dashboard, as in the start-up log, each saying what to do."""
    srv = server({"server": {"hostname": "754d265ac29a"}}, env={"MAIRUST_ADMIN_PASSWORD": "changeme"})
    srv.admin = (ADMIN_EMAIL, "changeme")
    logged = [l["message"] for l in srv.log_lines() if l["level"] == "WARN"]
    assert any("`754d265ac29a` is not a fully qualified domain name" in m for m in logged), logged
    assert any("example from the documentation" in m for m in logged), logged
    driver = browser
    driver.get(srv.base_url + "/")
    sign_in(driver, ADMIN_EMAIL, "changeme")
    visible(driver, "admin-link").click()
    box = visible(driver, "dash-warnings")
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#dash-warning-list li")) == 2)
    assert "MAIRUST_SERVER__HOSTNAME" in box.text and "MAIRUST_ADMIN_PASSWORD" in box.text, box.text
    screenshot(driver, "admin-dashboard-warnings")


def test_an_admin_manages_users_and_the_queue_and_a_user_changes_their_password(server, receiver, browser):
    rcv = receiver()
    srv = server(delivery_overrides(relay_host=f"127.0.0.1:{rcv.port}", retry_intervals=["1h"]))
    setup_domain_and_user(srv, users=("bob", "carol"))
    driver = browser
    admin_email, admin_password = srv.admin
    admin_api = srv.api()

    def user_record(email):
        return {u["email"]: u for u in admin_api.get("/api/v1/users").json()["items"]}.get(email)

    driver.get(srv.base_url + f"/#admin/user/{BOB}")
    sign_in(driver, admin_email, admin_password)
    wait(driver, lambda d: d.find_element(By.ID, "user-title").text == BOB)
    # Quota, admin flag and password, each confirmed on the server.
    quota = driver.find_element(By.ID, "user-quota")
    quota.clear()
    quota.send_keys("10", Keys.ENTER)
    status_says(driver, "Quota set to 10.0 MB.")
    assert user_record(BOB)["quota_bytes"] == 10 * 1024 * 1024
    driver.find_element(By.ID, "toggle-admin").click()
    status_says(driver, f"{BOB} is an administrator now.")
    wait(driver, lambda d: d.find_element(By.ID, "user-role").text == "Administrator")
    assert user_record(BOB)["is_admin"] is True
    driver.find_element(By.ID, "toggle-admin").click()
    status_says(driver, f"{BOB} is a plain user now.")
    assert user_record(BOB)["is_admin"] is False
    driver.find_element(By.ID, "reset-password").send_keys("reset-by-admin-1", Keys.ENTER)
    status_says(driver, f"Password of {BOB} reset")
    assert srv.api(BOB, USER_PASSWORD).get("/api/v1/messages").status_code == 401
    assert srv.api(BOB, "reset-by-admin-1").get("/api/v1/messages").status_code == 200
    screenshot(driver, "admin-user")
    # Your own account cannot be demoted or deleted from here.
    driver.get(srv.base_url + f"/#admin/user/{admin_email}")
    wait(driver, lambda d: d.find_element(By.ID, "user-title").text == admin_email)
    assert not driver.find_element(By.ID, "toggle-admin").is_enabled()
    assert driver.find_element(By.ID, "user-self-note").is_displayed()

    # Deleting a user asks first.
    carol = f"carol@{DOMAIN}"
    driver.get(srv.base_url + f"/#admin/user/{carol}")
    wait(driver, lambda d: d.find_element(By.ID, "user-title").text == carol)
    driver.find_element(By.ID, "delete-user").click()
    accept_confirmation(driver)
    status_says(driver, f"User {carol} deleted.")
    wait(driver, lambda d: BOB in d.find_element(By.ID, "user-rows").text)
    assert carol not in driver.find_element(By.ID, "user-rows").text and user_record(carol) is None

    # Two mails stuck at a deferring receiver: one cancelled quietly, one with a bounce.
    bob_api = srv.api(BOB, "reset-by-admin-1")
    for rcpt in ("always451-quiet", "always451-bounce"):
        assert bob_api.post("/api/v1/send", json={"from": BOB, "to": [f"{rcpt}@{REMOTE}"],
                                                  "subject": rcpt, "text": "stuck"}).status_code == 202
    driver.get(srv.base_url + "/#admin/queue?status=deferred")
    for _ in range(30):
        time.sleep(0.5)
        driver.find_element(By.CSS_SELECTOR, "#queue-filter button").click()
        if driver.find_element(By.ID, "queue-rows").text.count("deferred") == 2:
            break
    assert driver.find_element(By.ID, "queue-status").get_attribute("value") == "deferred"
    time.sleep(0.5)
    driver.find_element(By.CSS_SELECTOR, f"button[aria-label='Cancel: always451-quiet@{REMOTE}']").click()
    accept_confirmation(driver)
    status_says(driver, f"Delivery to always451-quiet@{REMOTE} cancelled.")
    driver.find_element(By.CSS_SELECTOR, f"button[aria-label='Cancel and bounce: always451-bounce@{REMOTE}']").click()
    accept_confirmation(driver)
    status_says(driver, "the sender gets a bounce")
    statuses = {i["recipient"]: i["status"] for i in admin_api.get("/api/v1/queue").json()["items"]}
    assert statuses == {f"always451-quiet@{REMOTE}": "cancelled", f"always451-bounce@{REMOTE}": "cancelled"}
    (bounce,) = bob_api.wait_messages(1)
    assert bounce["subject"] == "Undelivered Mail Returned to Sender"
    wait(driver, lambda d: d.find_element(By.ID, "queue-empty").is_displayed())
    assert driver.find_element(By.ID, "queue-empty").text == "Nothing in the queue matches this filter."
    driver.find_element(By.ID, "sign-out").click()

    # The user changes their own password, with the keyboard alone.
    sign_in(driver, BOB, "reset-by-admin-1")
    visible(driver, "inbox-view")
    driver.find_element(By.LINK_TEXT, "Password").send_keys(Keys.ENTER)
    current = visible(driver, "current-password")
    current.send_keys("not-my-password", Keys.TAB, "my-new-password-9", Keys.TAB, "my-new-password-9", Keys.ENTER)
    error = driver.find_element(By.ID, "password-error")
    wait(driver, lambda d: error.text == "The current password is wrong.")
    current.send_keys("reset-by-admin-1", Keys.TAB, "my-new-password-9", Keys.TAB, "not-the-same-9", Keys.ENTER)
    wait(driver, lambda d: error.text == "The new passwords do not match.")
    screenshot(driver, "password")
    driver.find_element(By.ID, "current-password").clear()
    driver.find_element(By.ID, "current-password").send_keys("reset-by-admin-1")
    driver.find_element(By.ID, "new-password").clear()
    driver.find_element(By.ID, "new-password").send_keys("my-new-password-9")
    driver.find_element(By.ID, "repeat-password").clear()
    driver.find_element(By.ID, "repeat-password").send_keys("my-new-password-9", Keys.ENTER)
    status_says(driver, "Your password is changed.")
    assert srv.api(BOB, "reset-by-admin-1").get("/api/v1/messages").status_code == 401
    assert srv.api(BOB, "my-new-password-9").get("/api/v1/messages").status_code == 200
    # Still signed in, with the new session.
    click_link(driver, "Inbox")
    wait(driver, lambda d: "Undelivered Mail" in d.find_element(By.ID, "message-rows").text)
    assert csp_violations(driver) == []


def folder_links(driver) -> list[str]:
    """The folder list as seen (the unread count's words for screen readers left out)."""
    return [a.text.split("\n")[0] for a in driver.find_elements(By.CSS_SELECTOR, "#folder-links a")]


def test_folders_move_mail_and_empty_the_trash_in_chromium(server, browser):
    """The folder list with unread counts, moving a message to Junk and on to the Trash (it
    keeps its id), and emptying the Trash: what the page shows is what the API then says."""
    srv = server()
    setup_domain_and_user(srv)
    for subject in ("Keep me", "Spammy offer"):
        assert srv.send(BOB, simple_message(subject))[0] == 250
    bob = srv.api(BOB, USER_PASSWORD)
    driver = browser
    driver.get(srv.base_url + "/")
    sign_in(driver, BOB, USER_PASSWORD)
    wait(driver, lambda d: folder_links(d) == ["Inbox (2)", "Sent", "Drafts", "Junk", "Trash", "Archive"])
    current = driver.find_element(By.CSS_SELECTOR, "#folder-links a[aria-current=page]")
    assert current.get_attribute("textContent") == "Inbox (2), 2 unread"
    screenshot(driver, "folders")

    open_row(driver, "Spammy offer")
    visible(driver, "message-view")
    message_id = driver.execute_script("return location.hash").split("/", 1)[1]
    assert not driver.find_element(By.CSS_SELECTOR, "button[data-move=Junk]").get_attribute("hidden")
    driver.find_element(By.CSS_SELECTOR, "button[data-move=Junk]").click()
    status_says(driver, "Moved to Junk.")
    wait(driver, lambda d: folder_links(d)[0] == "Inbox (1)")
    assert bob.get(f"/api/v1/messages/{message_id}").json()["folder"] == "Junk"

    click_link(driver, "Junk")
    wait(driver, lambda d: d.find_element(By.ID, "folder-title").text == "Junk")
    open_row(driver, "Spammy offer")
    visible(driver, "message-view")
    assert driver.find_element(By.ID, "back").text == "Back to Junk"
    assert not driver.find_element(By.CSS_SELECTOR, "button[data-move=Junk]").is_displayed()
    driver.find_element(By.CSS_SELECTOR, "button[data-move=Trash]").click()
    status_says(driver, "Moved to Trash.")

    click_link(driver, "Trash")
    wait(driver, lambda d: d.find_element(By.ID, "folder-title").text == "Trash")
    open_row(driver, "Spammy offer")
    visible(driver, "message-view")
    driver.find_element(By.ID, "back").click()
    empty = visible(driver, "empty-folder")
    empty.click()
    accept_confirmation(driver)
    status_says(driver, "Trash is empty.")
    wait(driver, lambda d: d.find_element(By.ID, "empty").is_displayed())
    assert bob.get(f"/api/v1/messages/{message_id}").status_code == 404
    assert [m["subject"] for m in bob.messages()["items"]] == ["Keep me"]
    assert csp_violations(driver) == []
